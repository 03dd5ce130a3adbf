//! Runtime globals whose address detector needs, found in the code that uses them
//! (so stripped binaries work, where `.symtab` is gone).
//!
//! `runtime.prof` is `struct { signalLock atomic.Uint32; hz atomic.Int32 }` (1.19 to
//! 1.27): the CPU profiling rate in effect, set by `runtime.setcpuprofilerate`. That
//! function takes `&prof` into a register for its `LOCK CMPXCHG` on `signalLock` and
//! reads or writes `prof.hz` at `&prof + 4` (MOVL/CMPL or another LEAQ), both RIP-relative.
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
