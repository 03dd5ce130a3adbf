//! Inlined call sites (the inline tree of each function) and direct call targets.
//!
//! # The inline tree
//!
//! A function into which the compiler inlined calls has two pieces of metadata:
//!
//! * `FUNCDATA_InlTree` (funcdata index 3): an array of `runtime.inlinedCall`, one per
//!   inlined call (at any depth). The funcdata value is an offset from
//!   `moduledata.gofunc` (the `go:func.*` symbol, `go.func.*` before Go 1.20); the
//!   array has no length, it is only ever indexed.
//! * `PCDATA_InlTreeIndex` (pcdata index 2): a pc-value table mapping each PC of the
//!   function to the innermost inline tree entry whose body it belongs to, or -1 for
//!   code of the function itself.
//!
//! `inlinedCall` differs by version (amd64, little-endian):
//!
//! * Go 1.18/1.19 (20 bytes): `parent int16` (index of the entry this call was inlined
//!   into, < 0 for the outer function), `funcID uint8`, pad, `file int32` (file number
//!   in the outer function's compilation unit, as for pcfile), `line int32` (line of
//!   the call), `func_ int32` (callee name, offset into the function name table),
//!   `parentPc int32`.
//! * Go 1.20 to 1.27 (16 bytes): `funcID uint8`, 3 pad, `nameOff int32` (callee name),
//!   `parentPc int32`, `startLine int32`. There is no parent index and no call
//!   position: `parentPc` is the offset from the function entry of an instruction
//!   whose source position is the call site and which belongs to the parent, so the
//!   parent is the InlTreeIndex at that PC and the call's file:line is the pcfile /
//!   pcln value there (this is what runtime.inlineUnwinder does).
//!
//! # Finding `moduledata.gofunc`
//!
//! pcHeader does not record it, so it comes from `runtime.firstmoduledata`, found as
//! for the Go 1.26 text base (`.go.module` section in 1.26+, the symbol when not
//! stripped, an `R_X86_64_RELATIVE` relocation whose addend is the pcHeader in PIE
//! files, or a scan of the writable segments for a word pointing at the pcHeader
//! followed by one pointing at its funcnametab). The field's offset depends on the
//! version (amd64):
//!
//! * 1.18/1.19: 304 (after rodata; no covctrs yet).
//! * 1.20 to 1.26: 320 (covctrs, ecovctrs were added before `end`).
//! * 1.27: 344 (typedesclen, itaboffset and itabsize were added).
//!
//! A candidate is accepted only if the inline trees of the first functions that have
//! one all decode to plausible entries (a valid callee name, a parent PC inside the
//! function), so a wrong layout guess (no build info) falls through to the next
//! offset, and finally to the `go:func.*` / `go.func.*` symbol.
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind};

use super::limits::{
    MAX_FILE_NAME_LEN, MAX_FUNCTION_SIZE, MAX_INLINE_DEPTH, MAX_INLINE_STEPS, MAX_INL_INDEX,
    MAX_NAME_LEN,
};
use super::pclntab::{pcvalue_runs, FuncRec, MAGIC_GO118};
use super::{find_moduledata, Func, GoBinary};

/// `FUNCDATA_InlTree` (runtime/funcdata.h; the same index 1.18 to 1.27).
pub const FUNCDATA_INL_TREE: usize = 3;
/// `PCDATA_InlTreeIndex`.
pub const PCDATA_INL_TREE_INDEX: usize = 2;

/// Offsets of `moduledata.gofunc` (amd64); see the module comment.
const MODULEDATA_GOFUNC_GO118: u64 = 304;
const MODULEDATA_GOFUNC_GO120: u64 = 320;
const MODULEDATA_GOFUNC_GO127: u64 = 344;
/// Size of `runtime.inlinedCall`.
const INLINED_CALL_GO118: usize = 20;
const INLINED_CALL_GO120: usize = 16;
/// How many inline trees are checked before a `gofunc` candidate is accepted.
const GOFUNC_SAMPLE: usize = 32;

/// One place where a function was inlined.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InlinedCall {
    /// The real (outermost) function whose code contains the inlined body.
    pub caller: String,
    /// The function the callee was textually inlined into: `caller`, or another
    /// function itself inlined into `caller` (empty if its entry is unreadable).
    pub parent: String,
    /// Source file of the call, in `parent` (empty when unknown).
    pub call_file: String,
    /// Source line of the call, in `parent` (0 when unknown).
    pub call_line: u32,
    /// `[start, end)` address ranges whose code belongs to this inlined instance (the
    /// callee's own code or code inlined deeper into it), sorted and merged. Scheduling
    /// can interleave the caller's instructions, so there may be several.
    pub ranges: Vec<(u64, u64)>,
    /// Where to probe the inlined call: its entry, the lowest instruction of `ranges`
    /// that is entered from outside them (see [`GoBinary::inlined_calls`]).
    pub probe_vaddr: u64,
    /// File offset of `probe_vaddr`.
    pub probe_file_offset: u64,
}

/// One logical frame at a PC: a function, inlined there or not, and the source
/// position in it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceFrame {
    pub function: String,
    /// Empty when unknown.
    pub file: String,
    /// 0 when unknown.
    pub line: u32,
}

/// Work allowed to expand one PC's inline frames (runs decoded, entries visited):
/// far above a real function's, small enough that a hostile table costs little.
const MAX_FRAME_STEPS: usize = 1 << 20;

/// One `runtime.inlinedCall`.
#[derive(Clone, Copy, Debug)]
struct Node {
    /// Callee name, offset into the function name table.
    name_off: u32,
    /// Offset from the outer function's entry of an instruction at the call site.
    parent_pc: u32,
    /// Go 1.18/1.19 only: parent index, file number and line of the call.
    old: Option<(i32, i32, i32)>,
}

/// One decoded instruction of the outer function.
#[derive(Clone, Copy, Debug)]
struct Insn {
    ip: u64,
    next: u64,
    /// Execution can continue at `next` (not JMP, RET, INT3, UD2, invalid bytes).
    falls_through: bool,
    /// Target of a direct near JMP / Jcc.
    branch_target: Option<u64>,
}

/// Runs `(start, end, value)` of a pc-value table, in address order.
type Runs = Vec<(u64, u64, i32)>;

/// The inline tree of one function with its InlTreeIndex runs.
struct FuncInline<'b> {
    bin: &'b GoBinary,
    rec: FuncRec,
    /// Virtual address of the `inlinedCall` array.
    tree: u64,
    old_layout: bool,
    /// InlTreeIndex runs `(start, end, index)` in address order.
    runs: Runs,
    nodes: HashMap<i32, Option<Node>>,
    /// pcfile and pcln runs, decoded on first use (Go 1.20+ call sites).
    file_line_runs: Option<(Runs, Runs)>,
    /// Work done (tree entries visited, ranges recorded, runs and instructions
    /// examined) and the most allowed: see [`GoBinary::inlined_calls`].
    steps: usize,
    budget: usize,
}

impl<'b> FuncInline<'b> {
    /// The tree of `rec`, if it has one (and an InlTreeIndex table, not decoded).
    fn tree(bin: &'b GoBinary, rec: &FuncRec, gofunc: u64) -> Option<FuncInline<'b>> {
        let off = bin.pcln.funcdata_off(bin.tab(), rec, FUNCDATA_INL_TREE)?;
        bin.pcln
            .pcdata_table(bin.tab(), rec, PCDATA_INL_TREE_INDEX)?;
        Some(FuncInline {
            bin,
            rec: *rec,
            tree: gofunc.checked_add(u64::from(off))?,
            old_layout: bin.pcln.magic == MAGIC_GO118,
            runs: Vec::new(),
            nodes: HashMap::new(),
            file_line_runs: None,
            steps: 0,
            budget: 0,
        })
    }

    /// The tree of `rec` with its InlTreeIndex runs, allowed `budget` steps of work.
    fn new(bin: &'b GoBinary, rec: &FuncRec, gofunc: u64, budget: usize) -> Option<Self> {
        let table = bin
            .pcln
            .pcdata_table(bin.tab(), rec, PCDATA_INL_TREE_INDEX)?;
        let mut fi = FuncInline::tree(bin, rec, gofunc)?;
        fi.runs = pcvalue_runs(table, rec.entry, rec.end, bin.pcln.quantum);
        fi.steps = fi.runs.len();
        fi.budget = budget;
        Some(fi)
    }

    fn over_budget(&self) -> bool {
        self.steps > self.budget
    }

    fn read_node(&self, i: i32) -> Option<Node> {
        if !(0..MAX_INL_INDEX).contains(&i) {
            return None;
        }
        let size = if self.old_layout {
            INLINED_CALL_GO118
        } else {
            INLINED_CALL_GO120
        };
        let at = self
            .tree
            .checked_add(u64::try_from(i).ok()?.checked_mul(size as u64)?)?;
        let b = self.bin.read_bytes_at(at, size)?;
        let word = |o: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
        };
        if self.old_layout {
            let parent = i16::from_le_bytes([*b.first()?, *b.get(1)?]);
            Some(Node {
                name_off: word(12)?,
                parent_pc: word(16)?,
                old: Some((i32::from(parent), word(4)? as i32, word(8)? as i32)),
            })
        } else {
            Some(Node {
                name_off: word(4)?,
                parent_pc: word(8)?,
                old: None,
            })
        }
    }

    fn node(&mut self, i: i32) -> Option<Node> {
        if let Some(n) = self.nodes.get(&i) {
            return *n;
        }
        let n = self.read_node(i);
        self.nodes.insert(i, n);
        n
    }

    /// The InlTreeIndex at `pc` (-1 outside every inlined body).
    fn index_at(&self, pc: u64) -> i32 {
        run_value(&self.runs, pc).unwrap_or(-1)
    }

    /// The PC of the call site instruction of `node`, if inside the function.
    fn parent_pc(&self, node: &Node) -> Option<u64> {
        let pc = self.rec.entry.checked_add(u64::from(node.parent_pc))?;
        (pc < self.rec.end).then_some(pc)
    }

    /// Index of the entry `node` was inlined into (< 0: the outer function).
    fn parent(&self, node: &Node) -> i32 {
        match node.old {
            Some((parent, _, _)) => parent,
            None => self.parent_pc(node).map_or(-1, |pc| self.index_at(pc)),
        }
    }

    fn name(&self, node: &Node) -> Option<&'b [u8]> {
        self.bin.pcln.name_at(self.bin.tab(), node.name_off)
    }

    /// Source position of the call of `node`, in its parent.
    fn call_site(&mut self, node: &Node) -> Option<(String, u32)> {
        let pcln = &self.bin.pcln;
        let tab = self.bin.tab();
        let cu = pcln.cu_offset(tab, &self.rec)?;
        let (fileno, line) = match node.old {
            Some((_, file, line)) => (file, line),
            None => {
                // pcfile and pcln at the call site, decoded once per function (not
                // once per call: a hostile table could hold a million of them).
                let pc = self.parent_pc(node)?;
                if self.file_line_runs.is_none() {
                    let rec = self.rec;
                    let decode = |t: Option<&[u8]>| {
                        t.map(|t| pcvalue_runs(t, rec.entry, rec.end, pcln.quantum))
                            .unwrap_or_default()
                    };
                    let (file, line) = pcln.file_line_tables(tab, &rec);
                    let runs = (decode(file), decode(line));
                    self.steps += runs.0.len() + runs.1.len();
                    self.file_line_runs = Some(runs);
                }
                let (file, line) = self.file_line_runs.as_ref()?;
                let (file, line) = (run_value(file, pc), run_value(line, pc));
                (file?, line?)
            }
        };
        let file = pcln.file_name(tab, cu, fileno);
        // Each name read is counted: a hostile table could name one long string in
        // every call.
        self.steps += file.as_ref().map_or(MAX_FILE_NAME_LEN, |f| f.len());
        Some((file?, u32::try_from(line).ok()?))
    }

    /// A sanity check of entry 0 used to validate a `gofunc` candidate.
    fn first_node_plausible(&self) -> bool {
        let Some(node) = self.read_node(0) else {
            return false;
        };
        let name_ok = self
            .name(&node)
            .is_some_and(|n| !n.is_empty() && n.contains(&b'.') && std::str::from_utf8(n).is_ok());
        let parent_ok = match node.old {
            Some((parent, _, line)) => parent >= -1 && line >= 0,
            None => self.parent_pc(&node).is_some(),
        };
        name_ok && parent_ok
    }

    /// The entries on the chain from `idx` outwards whose callee is `callee`.
    fn matching_ancestors(&mut self, idx: i32, callee: &[u8]) -> Vec<i32> {
        let mut matching = Vec::new();
        let mut k = idx;
        for _ in 0..MAX_INLINE_DEPTH {
            self.steps += 1;
            if self.over_budget() {
                break;
            }
            let Some(node) = self.node(k) else {
                break;
            };
            let pcln = &self.bin.pcln;
            if pcln.name_is(self.bin.tab(), node.name_off, callee) && !matching.contains(&k) {
                matching.push(k);
            }
            let next = self.parent(&node);
            if next < 0 || next == k {
                break;
            }
            k = next;
        }
        matching
    }

    /// The inlined instances of a function named `callee`: tree index → the runs
    /// (start, end) whose innermost entry is that instance or a descendant.
    fn instances_of(&mut self, callee: &[u8]) -> BTreeMap<i32, Vec<(u64, u64)>> {
        let mut out: BTreeMap<i32, Vec<(u64, u64)>> = BTreeMap::new();
        // Innermost index → the matching entries on its chain.
        let mut chains: HashMap<i32, Vec<i32>> = HashMap::new();
        let runs = self.runs.clone();
        for &(start, end, idx) in &runs {
            if idx < 0 {
                continue;
            }
            let matching = match chains.entry(idx) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(self.matching_ancestors(idx, callee)),
            };
            for &k in matching.iter() {
                self.steps += 1;
                out.entry(k).or_default().push((start, end));
            }
            if self.over_budget() {
                break; // hostile: fewer results
            }
        }
        out
    }
}

/// The value of the run containing `pc`.
fn run_value(runs: &[(u64, u64, i32)], pc: u64) -> Option<i32> {
    let i = runs.partition_point(|r| r.1 <= pc);
    match runs.get(i) {
        Some(&(start, _, v)) if start <= pc => Some(v),
        _ => None,
    }
}

/// Sorts and merges touching or overlapping ranges.
fn merge_ranges(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn in_ranges(ranges: &[(u64, u64)], pc: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= pc);
    ranges.get(i).is_some_and(|&(s, _)| s <= pc)
}

/// Decodes `code` mapped at `entry`.
fn decode(code: &[u8], entry: u64) -> Vec<Insn> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    let mut out = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut ins);
        let valid = !ins.is_invalid();
        let flow = ins.flow_control();
        let falls_through = valid
            && matches!(
                flow,
                FlowControl::Next
                    | FlowControl::ConditionalBranch
                    | FlowControl::Call
                    | FlowControl::IndirectCall
                    | FlowControl::XbeginXabortXend
            );
        let branch_target = (valid
            && matches!(
                flow,
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
            )
            && matches!(
                ins.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            ))
        .then(|| ins.near_branch_target());
        out.push(Insn {
            ip: ins.ip(),
            next: ins.next_ip(),
            falls_through,
            branch_target,
        });
    }
    out
}

/// The entry of an inlined body: among the instructions in `ranges`, those entered
/// from outside them (the function entry itself, the fall-through of an instruction
/// outside, or the target of a direct branch from outside); the lowest of these.
/// When there is none (only reached through an indirect jump), the lowest instruction.
fn choose_probe(insns: &[Insn], ranges: &[(u64, u64)], entry: u64) -> Option<u64> {
    let starts: HashSet<u64> = insns.iter().map(|i| i.ip).collect();
    let mut best: Option<u64> = None;
    let mut consider = |pc: u64| {
        if in_ranges(ranges, pc) && starts.contains(&pc) && best.is_none_or(|b| pc < b) {
            best = Some(pc);
        }
    };
    let mut prev: Option<&Insn> = None;
    for ins in insns {
        if in_ranges(ranges, ins.ip) {
            let entered = match prev {
                None => ins.ip == entry,
                Some(q) => !in_ranges(ranges, q.ip) && q.falls_through && q.next == ins.ip,
            };
            if entered {
                consider(ins.ip);
            }
        } else if let Some(t) = ins.branch_target {
            consider(t);
        }
        prev = Some(ins);
    }
    best.or_else(|| insns.iter().find(|i| in_ranges(ranges, i.ip)).map(|i| i.ip))
}

impl GoBinary {
    /// The logical frames at `pc`, innermost first: the functions inlined at `pc`,
    /// each with its source position, then the function whose code holds `pc`, with
    /// the position of the outermost inlined call in its own code (as the runtime's
    /// inlineUnwinder reports them). One frame when nothing is inlined there or the
    /// tree is unreadable; none when no function holds `pc`. Never fails.
    pub fn frames_at(&self, pc: u64) -> Vec<SourceFrame> {
        let Some(rec) = self.rec_at(pc).copied() else {
            return Vec::new();
        };
        let (mut file, mut line) = self.file_line(pc).unwrap_or_default();
        let mut out = Vec::new();
        let tree = self
            .funcdata_base()
            .filter(|_| rec.end.saturating_sub(rec.entry) <= MAX_FUNCTION_SIZE)
            .and_then(|gofunc| FuncInline::new(self, &rec, gofunc, MAX_FRAME_STEPS));
        if let Some(mut fi) = tree {
            let mut idx = fi.index_at(pc);
            for _ in 0..MAX_INLINE_DEPTH {
                fi.steps += 1;
                if idx < 0 || fi.over_budget() {
                    break;
                }
                let Some(node) = fi.node(idx) else {
                    break;
                };
                let Some(name) = fi.name(&node) else {
                    break;
                };
                out.push(SourceFrame {
                    function: String::from_utf8_lossy(name).into_owned(),
                    file: std::mem::take(&mut file),
                    line,
                });
                (file, line) = fi.call_site(&node).unwrap_or_default();
                let parent = fi.parent(&node);
                if parent >= idx && node.old.is_some() {
                    break; // Go 1.18/1.19 parents come first: a later one is corrupt
                }
                idx = parent;
            }
        }
        out.push(SourceFrame {
            function: self.func(&rec).name,
            file,
            line,
        });
        out
    }

    /// The base funcdata offsets are relative to: `moduledata.gofunc` (the address of
    /// `go:func.*`), or `None` when it cannot be found. See the module comment.
    pub fn funcdata_base(&self) -> Option<u64> {
        *self.gofunc.get_or_init(|| self.find_gofunc())
    }

    fn find_gofunc(&self) -> Option<u64> {
        let data = self.data();
        let offsets: &[u64] = if self.pcln.magic == MAGIC_GO118 {
            &[MODULEDATA_GOFUNC_GO118]
        } else if self.info.go_version.is_some_and(|v| v.at_least(1, 27)) {
            &[MODULEDATA_GOFUNC_GO127, MODULEDATA_GOFUNC_GO120]
        } else {
            &[MODULEDATA_GOFUNC_GO120, MODULEDATA_GOFUNC_GO127]
        };
        if let Some(md) = find_moduledata(data, &self.elf, &self.pcln) {
            for &off in offsets {
                let Some(v) = md.checked_add(off).and_then(|a| self.elf.read_ptr(data, a)) else {
                    continue;
                };
                if v != 0 && self.gofunc_plausible(v) {
                    return Some(v);
                }
            }
        }
        ["go:func.*", "go.func.*"]
            .iter()
            .filter_map(|s| self.elf.data_symbols.get(*s).copied())
            .find(|&v| self.gofunc_plausible(v))
    }

    /// Every sampled inline tree decodes sanely relative to `gofunc`.
    fn gofunc_plausible(&self, gofunc: u64) -> bool {
        if self.elf.file_offset(gofunc).is_none() {
            return false;
        }
        self.funcs
            .iter()
            .filter_map(|rec| FuncInline::tree(self, rec, gofunc))
            .take(GOFUNC_SAMPLE)
            .all(|fi| fi.first_node_plausible())
    }

    /// Every place where the function named `callee` (e.g. "runtime.NumGoroutine") was
    /// inlined, in any function, at any depth, ordered by caller address.
    ///
    /// An instance with no code of its own left (its body optimised away entirely) has
    /// no PC in the InlTreeIndex table and is not found: the tree has no length to
    /// enumerate it by.
    ///
    /// `probe_vaddr` heuristic: the inlined body's entry. Decoding the caller, an
    /// instruction of `ranges` is an entry when execution arrives there from outside
    /// the ranges: it is the function entry, or it follows an instruction outside the
    /// ranges that can fall through (anything but JMP, RET, INT3, UD2), or a direct
    /// JMP/Jcc outside the ranges targets it. The lowest such instruction is chosen
    /// (instructions of the caller scheduled into the middle of the body make later
    /// parts look entered, but the real entry comes first in address order, as Go
    /// lays blocks out in order and moves only cold blocks to the end). Without any,
    /// the lowest instruction of the ranges. A body that starts with a loop can make
    /// the entry a loop header that runs once per iteration; a body reached only by
    /// an indirect jump is not seen as entered.
    ///
    /// Callers larger than [`MAX_FUNCTION_SIZE`] are not searched. The whole search
    /// does at most [`MAX_INLINE_STEPS`] steps of work (pc-value runs decoded, tree
    /// entries visited, ranges recorded, instructions examined per instance), far
    /// more than the largest real binaries need. Never fails: a missing or
    /// corrupt tree, or one past that budget, yields fewer (or no) results.
    pub fn inlined_calls(&self, callee: &str) -> Vec<InlinedCall> {
        let Some(gofunc) = self.funcdata_base() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut spent = 0usize;
        for rec in &self.funcs {
            if spent > MAX_INLINE_STEPS {
                break;
            }
            if rec.end.saturating_sub(rec.entry) > MAX_FUNCTION_SIZE {
                continue; // not decoded either (see probe_point)
            }
            let budget = MAX_INLINE_STEPS - spent;
            let Some(mut fi) = FuncInline::new(self, rec, gofunc, budget) else {
                continue;
            };
            self.search_caller(&mut fi, callee.as_bytes(), &mut out);
            spent = spent.saturating_add(fi.steps);
        }
        out
    }

    /// The inlined instances of `callee` in the function of `fi`, into `out`.
    fn search_caller(&self, fi: &mut FuncInline<'_>, callee: &[u8], out: &mut Vec<InlinedCall>) {
        if fi.runs.iter().all(|r| r.2 < 0) {
            return;
        }
        let instances = fi.instances_of(callee);
        if instances.is_empty() {
            return;
        }
        let rec = fi.rec;
        let caller = self.func(&rec);
        let insns = self.decode_func(&caller).unwrap_or_default();
        fi.steps += insns.len();
        for (k, ranges) in instances {
            fi.steps += insns.len() + ranges.len() + caller.name.len();
            if fi.over_budget() {
                return;
            }
            let Some(node) = fi.node(k) else {
                continue;
            };
            let ranges = merge_ranges(ranges);
            let parent_idx = fi.parent(&node);
            let parent = if parent_idx < 0 {
                caller.name.clone()
            } else {
                let name = fi.node(parent_idx).and_then(|p| fi.name(&p));
                fi.steps += name.map_or(MAX_NAME_LEN, <[u8]>::len);
                name.map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default()
            };
            let (call_file, call_line) = fi.call_site(&node).unwrap_or_default();
            let probe = if insns.is_empty() {
                ranges.first().map(|r| r.0)
            } else {
                choose_probe(&insns, &ranges, caller.entry)
            };
            let Some(probe_vaddr) = probe else {
                continue;
            };
            let Some(probe_file_offset) = self.file_offset(probe_vaddr) else {
                continue;
            };
            out.push(InlinedCall {
                caller: caller.name.clone(),
                parent,
                call_file,
                call_line,
                ranges,
                probe_vaddr,
                probe_file_offset,
            });
        }
    }

    /// The instructions of `f` (None when too large or not mapped).
    fn decode_func(&self, f: &Func) -> Option<Vec<Insn>> {
        let size = f.end.checked_sub(f.entry)?;
        if size == 0 || size > MAX_FUNCTION_SIZE || !self.elf.is_executable_addr(f.entry) {
            return None;
        }
        let code = self.read_bytes_at(f.entry, usize::try_from(size).ok()?)?;
        Some(decode(code, f.entry))
    }

    /// Targets of the direct near CALLs (`CALL rel32`) in `f`'s body `[entry, end)`, in
    /// instruction order, each once. A target is usually a function entry, but not
    /// always: the compiler calls into the middle of runtime.duffzero and
    /// runtime.duffcopy (Duff's devices). Empty when `f` is larger than
    /// [`MAX_FUNCTION_SIZE`] or not mapped from the file.
    pub fn call_targets(&self, f: &Func) -> Vec<u64> {
        let mut seen = HashSet::new();
        self.direct_calls(f)
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| seen.insert(*t))
            .collect()
    }

    /// The addresses of the CALL instructions in `f` that call `target` directly, in
    /// instruction order (a probe there sees the call's arguments in their registers).
    pub fn call_sites(&self, f: &Func, target: u64) -> Vec<u64> {
        self.direct_calls(f)
            .into_iter()
            .filter(|(_, t)| *t == target)
            .map(|(site, _)| site)
            .collect()
    }

    /// Every direct call in `f`: (address of the CALL instruction, its target).
    fn direct_calls(&self, f: &Func) -> Vec<(u64, u64)> {
        let size = f.end.saturating_sub(f.entry);
        if size == 0 || size > MAX_FUNCTION_SIZE || !self.elf.is_executable_addr(f.entry) {
            return Vec::new();
        }
        let Some(code) = usize::try_from(size)
            .ok()
            .and_then(|n| self.read_bytes_at(f.entry, n))
        else {
            return Vec::new();
        };
        let mut decoder = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE);
        let mut ins = Instruction::default();
        let mut out = Vec::new();
        while decoder.can_decode() {
            decoder.decode_out(&mut ins);
            if ins.mnemonic() == Mnemonic::Call
                && matches!(ins.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32)
            {
                out.push((ins.ip(), ins.near_branch_target()));
            }
        }
        out
    }

    /// Names of the functions `name` calls directly ([`GoBinary::call_targets`]
    /// resolved with [`GoBinary::func_at`]), in order, each once. Empty when there is no
    /// such function.
    pub fn called_functions(&self, name: &str) -> Vec<String> {
        let Some(f) = self.func_by_name(name) else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for t in self.call_targets(&f) {
            if let Some(callee) = self.func_at(t) {
                if !out.contains(&callee.name) {
                    out.push(callee.name);
                }
            }
        }
        out
    }
}

/// A lazily computed `moduledata.gofunc`.
pub(crate) type GofuncCell = OnceLock<Option<u64>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_lookup() {
        let r = merge_ranges(vec![(10, 12), (0, 4), (4, 6), (11, 20), (30, 31)]);
        assert_eq!(r, vec![(0, 6), (10, 20), (30, 31)]);
        assert!(in_ranges(&r, 0) && in_ranges(&r, 5) && in_ranges(&r, 19) && in_ranges(&r, 30));
        assert!(!in_ranges(&r, 6) && !in_ranges(&r, 9) && !in_ranges(&r, 20) && !in_ranges(&r, 31));
        assert!(!in_ranges(&[], 0));
    }

    fn insn(ip: u64, len: u64, falls_through: bool, branch_target: Option<u64>) -> Insn {
        Insn {
            ip,
            next: ip + len,
            falls_through,
            branch_target,
        }
    }

    #[test]
    fn probe_is_the_entered_instruction() {
        // 0: parent; 2: body (entered by fall-through); 4: parent scheduled inside;
        // 6: body again (looks entered too, but is later).
        let insns = [
            insn(0, 2, true, None),
            insn(2, 2, true, None),
            insn(4, 2, true, None),
            insn(6, 2, false, None),
        ];
        assert_eq!(choose_probe(&insns, &[(2, 4), (6, 8)], 0), Some(2));
        // A body reached only by a jump from outside: 0 jumps to 6, 4 is a loop
        // header inside reached only from within (6 jumps back to it).
        let insns = [
            insn(0, 2, false, Some(6)),
            insn(2, 2, false, None), // ret
            insn(4, 2, true, None),
            insn(6, 2, true, Some(4)),
            insn(8, 2, false, None),
        ];
        assert_eq!(choose_probe(&insns, &[(4, 8)], 0), Some(6));
        // Inlined at the very start of the function.
        assert_eq!(choose_probe(&insns, &[(0, 2)], 0), Some(0));
        // Nothing enters: the lowest instruction.
        let insns = [insn(0, 2, false, None), insn(2, 2, false, None)];
        assert_eq!(choose_probe(&insns, &[(2, 4)], 0), Some(2));
        assert_eq!(choose_probe(&insns, &[(10, 14)], 0), None);
        assert_eq!(choose_probe(&[], &[(10, 14)], 0), None);
    }

    #[test]
    fn decoding_marks_flow() {
        // jmp +2; ret; call rel32 0; int3; jne -2
        let code = [0xeb, 0x01, 0xc3, 0xe8, 0, 0, 0, 0, 0xcc, 0x75, 0xfe];
        let insns = decode(&code, 0x100);
        let ips: Vec<u64> = insns.iter().map(|i| i.ip).collect();
        assert_eq!(ips, vec![0x100, 0x102, 0x103, 0x108, 0x109]);
        let ft: Vec<bool> = insns.iter().map(|i| i.falls_through).collect();
        assert_eq!(ft, vec![false, false, true, false, true]);
        assert_eq!(insns[0].branch_target, Some(0x103));
        assert_eq!(insns[2].branch_target, None); // calls are not branches here
        assert_eq!(insns[4].branch_target, Some(0x109));
    }
}
