//! Runtime globals whose address detector needs, found in the code that uses them
//! (so stripped binaries work, where `.symtab` is gone).
//!
//! `runtime.prof` is `struct { signalLock atomic.Uint32; hz atomic.Int32 }` (1.19 to
//! 1.27): the CPU profiling rate in effect, set by `runtime.setcpuprofilerate`. That
//! function takes `&prof` into a register for its `LOCK CMPXCHG` on `signalLock` and
//! reads or writes `prof.hz` at `&prof + 4` (MOVL/CMPL or another LEAQ), both RIP-relative.
//!
//! `runtime/trace.tracing` (1.25 to 1.27) is the tracer's multiplexer, which says who
//! the execution tracer runs for: `trace.Start`'s writer, a `trace.FlightRecorder`, or
//! both. `(*FlightRecorder).Start` passes `&tracing` as the receiver of
//! `subscribeFlightRecorder` (a LEAQ into AX right before the CALL); that function is
//! linked only into programs that use a flight recorder.
use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

use std::collections::HashSet;

use super::{GoBinary, MAX_FUNCTION_SIZE};

impl GoBinary {
    /// Address (file virtual address) of `runtime.prof.hz`, the CPU profiling rate in
    /// Hz while a profile runs (0 otherwise), or None when it cannot be found.
    pub fn cpu_profile_hz_addr(&self) -> Option<u64> {
        let f = self.func_by_name("runtime.setcpuprofilerate")?;
        let size = f.end.checked_sub(f.entry)?;
        if size == 0 || size > MAX_FUNCTION_SIZE {
            return None;
        }
        let code = self.read_bytes_at(f.entry, usize::try_from(size).ok()?)?;
        let mut decoder = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE);
        // RIP-relative addresses used by the function: LEA targets (with the register
        // they load) and memory operands of other instructions.
        let mut leas: Vec<(Register, u64)> = vec![];
        let mut touched: HashSet<u64> = HashSet::new();
        let mut lock_base: Vec<Register> = vec![];
        for ins in &mut decoder {
            if ins.is_invalid() {
                break;
            }
            let rip_rel = ins.is_ip_rel_memory_operand();
            if ins.mnemonic() == Mnemonic::Lea && rip_rel {
                leas.push((ins.op0_register(), ins.ip_rel_memory_address()));
            } else if rip_rel {
                touched.insert(ins.ip_rel_memory_address());
            }
            if ins.mnemonic() == Mnemonic::Cmpxchg
                && ins.has_lock_prefix()
                && (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory)
                && !lock_base.contains(&ins.memory_base())
            {
                lock_base.push(ins.memory_base());
            }
        }
        // &prof: loaded into the register a LOCK CMPXCHG then uses, and prof+4 is
        // used too (as a memory operand or another LEA).
        let lea_addrs: HashSet<u64> = leas.iter().map(|(_, a)| *a).collect();
        leas.iter()
            .filter(|(reg, _)| lock_base.contains(reg))
            .filter_map(|(_, base)| base.checked_add(4))
            .find(|hz| touched.contains(hz) || lea_addrs.contains(hz))
    }
}

/// `runtime/trace.traceMultiplexer` (runtime/trace/subscribe.go, the same in 1.25,
/// 1.26 and 1.27): `sync.Mutex` (8 bytes), `enabled atomic.Bool` (4, padded to 8),
/// `subscribers int` at 16, `subscribersMu sync.Mutex` at 24, `traceStartWriter
/// io.Writer` at 32 (type word first), `flightRecorder *recorder` at 48.
pub mod trace_multiplexer {
    pub const SIZE: usize = 56;
    const SUBSCRIBERS: usize = 16;
    const TRACE_START_WRITER: usize = 32;
    const FLIGHT_RECORDER: usize = 48;

    /// Who the execution tracer runs for.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct Subscribers {
        /// A `trace.Start` writer.
        pub trace_start: bool,
        /// A `trace.FlightRecorder`.
        pub flight_recorder: bool,
    }

    /// Reads the multiplexer's bytes; None when they do not look like one (a
    /// subscriber count that is not 0 to 2).
    pub fn parse(b: &[u8]) -> Option<Subscribers> {
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        if word(SUBSCRIBERS)? > 2 {
            return None;
        }
        Some(Subscribers {
            trace_start: word(TRACE_START_WRITER)? != 0,
            flight_recorder: word(FLIGHT_RECORDER)? != 0,
        })
    }
}

impl GoBinary {
    /// Address (file virtual address) of `runtime/trace.tracing`, or None when the
    /// program has no flight recorder (nor Go 1.25+) or it cannot be found.
    pub fn trace_multiplexer_addr(&self) -> Option<u64> {
        let f = self.func_by_name("runtime/trace.(*FlightRecorder).Start")?;
        let callee = self
            .func_by_name("runtime/trace.(*traceMultiplexer).subscribeFlightRecorder")?
            .entry;
        let size = f.end.checked_sub(f.entry)?;
        if size == 0 || size > MAX_FUNCTION_SIZE {
            return None;
        }
        let code = self.read_bytes_at(f.entry, usize::try_from(size).ok()?)?;
        let mut decoder = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE);
        let mut receiver = None;
        for ins in &mut decoder {
            if ins.is_invalid() {
                break;
            }
            if ins.mnemonic() == Mnemonic::Lea
                && ins.is_ip_rel_memory_operand()
                && ins.op0_register() == Register::RAX
            {
                receiver = Some(ins.ip_rel_memory_address());
            } else if ins.mnemonic() == Mnemonic::Call && ins.near_branch_target() == callee {
                return receiver;
            } else if ins.op_count() > 0
                && ins.op0_kind() == OpKind::Register
                && ins.op0_register().full_register() == Register::RAX
            {
                // AX overwritten after the LEAQ: not the receiver.
                receiver = None;
            }
        }
        None
    }
}

#[cfg(test)]
mod multiplexer_tests {
    use super::trace_multiplexer::{parse, Subscribers, SIZE};

    #[test]
    fn subscribers_are_read_from_the_multiplexer_layout() {
        let mut b = vec![0u8; SIZE];
        assert_eq!(
            parse(&b),
            Some(Subscribers {
                trace_start: false,
                flight_recorder: false
            })
        );
        b[16] = 1;
        b[48] = 0x40;
        assert_eq!(
            parse(&b),
            Some(Subscribers {
                trace_start: false,
                flight_recorder: true
            })
        );
        b[16] = 2;
        b[32] = 0x10;
        assert_eq!(
            parse(&b),
            Some(Subscribers {
                trace_start: true,
                flight_recorder: true
            })
        );
        b[16] = 7;
        assert_eq!(parse(&b), None);
        assert_eq!(parse(&b[..40]), None);
    }
}
