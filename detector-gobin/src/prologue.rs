//! Machine-code analysis of one function: the stack-check prologue and the RETs.
//!
//! Go functions that may grow the stack begin with a check against the goroutine's
//! stack guard (`g` is in R14 under ABIInternal): `CMP RSP, [R14+10h]; JBE morestack`,
//! or for larger frames `LEA R12, [RSP-N]; CMP R12, [R14+10h]; JBE`; functions running
//! on the system stack may compare against stackguard1 at `[R14+18h]`. When the check
//! fails the function calls morestack and jumps back to its entry, so a probe at the
//! entry can fire twice for one call; the first instruction after the conditional jump
//! does not, and neither does a probe on the jump itself whose program skips the hits
//! where the jump will be taken (the flags of the CMP are in the trap's registers).
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register};

/// How many instructions from the entry may precede the stack-check CMP.
const PROLOGUE_WINDOW: usize = 6;

/// Result of decoding one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CodeFacts {
    /// Address of the first instruction after the stack check, if there is one.
    pub after_stack_check: Option<u64>,
    /// Address of the stack check's conditional jump when it is a JBE (taken, to
    /// morestack, when CF or ZF is set: the only form Go emits).
    pub stack_check_jbe: Option<u64>,
    /// Address of every RET.
    pub rets: Vec<u64>,
}

/// True for `CMP reg, [R14+10h]` / `CMP [R14+18h], reg` and the like.
fn is_stack_guard_cmp(ins: &Instruction) -> bool {
    if ins.mnemonic() != Mnemonic::Cmp {
        return false;
    }
    (0..ins.op_count()).any(|i| {
        ins.op_kind(i) == OpKind::Memory
            && ins.memory_base() == Register::R14
            && ins.memory_index() == Register::None
            && matches!(ins.memory_displacement64(), 0x10 | 0x18)
    })
}

/// Whether `ins` is `JBE` (`JNA`), short or near: taken when CF = 1 or ZF = 1.
fn is_jbe(ins: &Instruction) -> bool {
    ins.mnemonic() == Mnemonic::Jbe && ins.is_jcc_short_or_near()
}

/// Whether Linux x86 uprobes emulate the instruction at the start of `code` (PUSH of a
/// register, JMP/CALL rel, Jcc, one-byte NOP: arch/x86/kernel/uprobes.c) instead of
/// single-stepping it out of line. Single-stepping takes a second trap (a debug
/// exception), which costs 3-30× more, most in virtual machines.
pub fn kernel_emulates(code: &[u8]) -> bool {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let ins = decoder.decode();
    if ins.is_invalid() {
        return false;
    }
    match ins.mnemonic() {
        Mnemonic::Push => ins.op_count() == 1 && ins.op0_kind() == OpKind::Register,
        Mnemonic::Jmp | Mnemonic::Call => {
            matches!(ins.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32)
        }
        Mnemonic::Nop => code.first() == Some(&0x90),
        _ => is_conditional_jump(&ins),
    }
}

fn is_conditional_jump(ins: &Instruction) -> bool {
    ins.flow_control() == FlowControl::ConditionalBranch && ins.is_jcc_short_or_near()
}

/// Decodes `code` (the bytes of one function mapped at `entry`).
pub(crate) fn analyze(code: &[u8], entry: u64) -> CodeFacts {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    let mut after_stack_check = None;
    let mut stack_check_jbe = None;
    let mut rets = Vec::new();
    let mut index = 0usize;
    // Set when the CMP was seen and the next instruction decides.
    let mut pending_cmp = false;
    let mut in_prologue = true;
    while decoder.can_decode() {
        decoder.decode_out(&mut ins);
        if ins.is_invalid() {
            in_prologue = false;
            pending_cmp = false;
            index += 1;
            continue;
        }
        if ins.mnemonic() == Mnemonic::Ret {
            rets.push(ins.ip());
        }
        if in_prologue {
            if pending_cmp {
                if is_conditional_jump(&ins) {
                    after_stack_check = Some(ins.next_ip());
                    stack_check_jbe = is_jbe(&ins).then(|| ins.ip());
                }
                in_prologue = false;
            } else if is_stack_guard_cmp(&ins) {
                pending_cmp = true;
            } else if index >= PROLOGUE_WINDOW || ins.flow_control() != FlowControl::Next {
                // Any branch, call or return before the check: this is not a prologue.
                in_prologue = false;
            }
        }
        index += 1;
    }
    CodeFacts {
        after_stack_check,
        stack_check_jbe,
        rets,
    }
}

#[cfg(test)]
mod emulation_tests {
    use super::kernel_emulates;

    #[test]
    fn push_and_branches_are_emulated_the_rest_single_stepped() {
        assert!(kernel_emulates(&[0x55])); // push rbp (Go 1.21+ frames)
        assert!(kernel_emulates(&[0x41, 0x57])); // push r15
        assert!(kernel_emulates(&[0xe8, 0, 0, 0, 0])); // call rel32
        assert!(kernel_emulates(&[0x0f, 0x86, 0, 0, 0, 0])); // jbe rel32
        assert!(kernel_emulates(&[0x90]));
        assert!(!kernel_emulates(&[0x48, 0x81, 0xec, 0x08, 0x01, 0, 0])); // sub rsp (Go 1.19)
        assert!(!kernel_emulates(&[0x48, 0x89, 0xe5])); // mov rbp, rsp
        assert!(!kernel_emulates(&[]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_frame_prologue() {
        // cmp rsp,[r14+10h]; jbe +0x20; push rbp; mov rbp,rsp; ... ret
        let code = [
            0x49, 0x3b, 0x66, 0x10, // cmp rsp,[r14+10h]
            0x76, 0x20, // jbe
            0x55, // push rbp
            0x48, 0x89, 0xe5, // mov rbp,rsp
            0x5d, // pop rbp
            0xc3, // ret
            0xcc, 0xcc,
        ];
        let f = analyze(&code, 0x1000);
        assert_eq!(f.after_stack_check, Some(0x1006));
        assert_eq!(f.stack_check_jbe, Some(0x1004));
        assert_eq!(f.rets, vec![0x100b]);
    }

    #[test]
    fn large_frame_prologue() {
        let code = [
            0x4c, 0x8d, 0xa4, 0x24, 0x00, 0xfe, 0xff, 0xff, // lea r12,[rsp-200h]
            0x4d, 0x3b, 0x66, 0x10, // cmp r12,[r14+10h]
            0x0f, 0x86, 0x00, 0x01, 0x00, 0x00, // jbe near
            0x55, // push rbp
            0xc2, 0x08, 0x00, // ret 8
        ];
        let f = analyze(&code, 0x2000);
        assert_eq!(f.after_stack_check, Some(0x2012));
        assert_eq!(f.stack_check_jbe, Some(0x200c));
        assert_eq!(f.rets, vec![0x2013]);
    }

    #[test]
    fn stackguard1_prologue() {
        let code = [
            0x49, 0x3b, 0x66, 0x18, // cmp rsp,[r14+18h]
            0x76, 0x10, // jbe
            0xc3,
        ];
        assert_eq!(analyze(&code, 0).after_stack_check, Some(6));
        assert_eq!(analyze(&code, 0).stack_check_jbe, Some(4));
        // Another condition (JB) still ends the prologue, but is not a JBE to probe.
        let jb = [0x49, 0x3b, 0x66, 0x10, 0x72, 0x10, 0xc3];
        assert_eq!(analyze(&jb, 0).after_stack_check, Some(6));
        assert_eq!(analyze(&jb, 0).stack_check_jbe, None);
    }

    #[test]
    fn nosplit_and_odd_code() {
        // No check: push rbp; mov rbp,rsp; ret.
        let f = analyze(&[0x55, 0x48, 0x89, 0xe5, 0xc3], 0x10);
        assert_eq!(f.after_stack_check, None);
        assert_eq!(f.stack_check_jbe, None);
        assert_eq!(f.rets, vec![0x14]);
        // CMP on another register, or not followed by a jump, is not a stack check.
        assert_eq!(
            analyze(&[0x49, 0x3b, 0x67, 0x10, 0x76, 0x10], 0).after_stack_check,
            None
        );
        assert_eq!(
            analyze(&[0x49, 0x3b, 0x66, 0x10, 0x90, 0xc3], 0).after_stack_check,
            None
        );
        // A check after a call is not a prologue.
        let late = [0xe8, 0, 0, 0, 0, 0x49, 0x3b, 0x66, 0x10, 0x76, 0x10];
        assert_eq!(analyze(&late, 0).after_stack_check, None);
        // Garbage and truncated bytes decode without panicking.
        let _ = analyze(&[0x0f, 0xff, 0xff, 0x66, 0x66, 0x66, 0x0f], 0);
        let _ = analyze(&[0x49, 0x3b], 0);
        let _ = analyze(&[], u64::MAX);
    }
}
