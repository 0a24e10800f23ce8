//! The translator: guest basic blocks compiled to x86-64 with a template emitter (dynasm-rs).
//!
//! A block is a run of instructions inside one guest page, ending at a jump, a branch, a
//! system instruction, the page's end or [`MAX_BLOCK`] instructions. It is keyed by its
//! virtual address and the RAM offset it was read from, so satp writes and SFENCE.VMA do not
//! throw code away; only stores into its page (and DMA, and hardware A/D updates of a page
//! table that shares the page) drop it.
//!
//! Exact counts: the dispatcher enters a block only when the budget to the next event covers
//! all of it, and so does every chained jump between blocks. Inside a block, an instruction
//! whose inline fast path does not apply (a TLB miss, MMIO, anything but plain integer work)
//! runs through [`helper_exec`], the interpreter's own `exec`, with pc and count stored
//! first: a trap, an MMIO access or an exit leaves pc and count exactly where the interpreter
//! leaves them, and the block returns to the dispatcher whenever the interpreter's loop would
//! look again (`brk`), translations were flushed or code was dropped.
//!
//! Guest registers live in the hart (`Hart::x`); host registers hold the context:
//! rbx = hart, r12 = RAM base, r13 = [`Ctx`], r14 = end count, r15 = count at block entry,
//! rbp = the load TLB. Within a block, up to four guest registers are kept in r8-r11
//! ([`Cache`]), and stored back before anything else may look at the hart. Blocks chain
//! through a jump cache keyed by virtual pc and translation generation (`Mmu::gen`, bumped by every flush), so a chained jump never uses a mapping
//! that an SFENCE.VMA, a satp write or a privilege change made stale.

use std::collections::HashMap;
use std::mem::offset_of;
use std::time::Instant;

use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi, VecAssembler};

use crate::exec::{decode, Kind, Op};
use crate::mmu::{fetch_tag, Access, Entry, Pa, TLB_ENTRIES};
use crate::{Bus, Hart, JitStats};

/// Most instructions in one block.
const MAX_BLOCK: usize = 64;
/// Bytes of executable memory; when they run out, every block is dropped and rebuilt.
const CODE_BYTES: usize = 64 << 20;
/// Room a block may need at most (about 150 bytes per instruction, with slow paths and the
/// cached registers' stores and loads around calls).
const MAX_BLOCK_BYTES: usize = MAX_BLOCK * 256 + 256;
const JC_BITS: u32 = 14;
const JC_SIZE: usize = 1 << JC_BITS;
const INVALID: u64 = u64::MAX;

/// One jump-cache entry (32 bytes; the chain stub reads it by these offsets).
#[repr(C)]
#[derive(Clone, Copy)]
struct JcEntry {
    vpc: u64,
    gen: u64,
    code: u64,
    n: u32,
    id: u32,
}

const EMPTY: JcEntry = JcEntry {
    vpc: INVALID,
    gen: 0,
    code: 0,
    n: 0,
    id: 0,
};

/// What translated code reads at run time (through r13).
#[repr(C)]
pub(crate) struct Ctx {
    bus: *mut (),
    store_tlb: *const Entry,
    load_tlb: *const Entry,
    ram: *mut u8,
    end: u64,
    jc: *const JcEntry,
    helper: usize,
    exit: usize,
    chain: usize,
    chain_link: usize,
    gen: u64,
    /// An unlinked direct jump just taken: the address of its rel32 field, its block and
    /// its target (0 when none); the dispatcher links it to the target's block.
    link_slot: u64,
    link_from: u64,
    link_pc: u64,
}

const C_LINK_SLOT: i32 = offset_of!(Ctx, link_slot) as i32;
const C_LINK_FROM: i32 = offset_of!(Ctx, link_from) as i32;
const C_LINK_PC: i32 = offset_of!(Ctx, link_pc) as i32;
const C_STORE_TLB: i32 = offset_of!(Ctx, store_tlb) as i32;
const C_LOAD_TLB: i32 = offset_of!(Ctx, load_tlb) as i32;
const C_RAM: i32 = offset_of!(Ctx, ram) as i32;
const C_END: i32 = offset_of!(Ctx, end) as i32;
const C_JC: i32 = offset_of!(Ctx, jc) as i32;
const C_HELPER: i32 = offset_of!(Ctx, helper) as i32;
const C_EXIT: i32 = offset_of!(Ctx, exit) as i32;
const C_CHAIN: i32 = offset_of!(Ctx, chain) as i32;
const C_CHAIN_LINK: i32 = offset_of!(Ctx, chain_link) as i32;
const C_GEN: i32 = offset_of!(Ctx, gen) as i32;

const H_X: i32 = offset_of!(Hart, x) as i32;
const H_PC: i32 = offset_of!(Hart, pc) as i32;
const H_COUNT: i32 = offset_of!(Hart, count) as i32;
const H_DTAG: i32 = offset_of!(Hart, mmu.dtag) as i32;

fn xr(r: u8) -> i32 {
    H_X + 8 * (r & 31) as i32
}

/// Host registers (x86-64 numbers) that hold guest registers within a block: r8-r11, which
/// the context does not use. Calls clobber them, so every call is preceded by a write-back
/// and followed by a reload.
const CACHE_REGS: [u8; 4] = [8, 9, 10, 11];
const RAX: u8 = 0;
const RCX: u8 = 1;
const RSI: u8 = 6;
const RDI: u8 = 7;

/// Where an operand is while a block runs: in the hart (at this offset from rbx) or in a host
/// register.
#[derive(Clone, Copy)]
enum Src {
    Mem(i32),
    Reg(u8),
}

// dynasm expands a register chosen at run time (`Rq(h)`) to `h.into()`.
#[allow(clippy::useless_conversion)]
impl Src {
    /// Load the operand into host register `to`.
    fn load(self, a: &mut VecAssembler<X64Relocation>, to: u8) {
        match self {
            Src::Mem(o) => dynasm!(a ; .arch x64 ; mov Rq(to), QWORD [rbx + o]),
            Src::Reg(h) => dynasm!(a ; .arch x64 ; mov Rq(to), Rq(h)),
        }
    }

    /// Load the operand's low 32 bits into host register `to` (zero-extended).
    fn load32(self, a: &mut VecAssembler<X64Relocation>, to: u8) {
        match self {
            Src::Mem(o) => dynasm!(a ; .arch x64 ; mov Rd(to), DWORD [rbx + o]),
            Src::Reg(h) => dynasm!(a ; .arch x64 ; mov Rd(to), Rd(h)),
        }
    }
}

/// The guest registers a block keeps in host registers: which, and which of them were written
/// since they were last stored to the hart (known at translation: a block is straight-line
/// code, with its slow paths apart).
///
/// The hart holds every guest register whenever anything else may look at it: at every
/// block exit, chained jump and call to [`helper_exec`] (the interpreter's `exec`, for a
/// slow path or an instruction without an inline form), and around an inline F/D
/// instruction (which uses r8 and r9 and may read or write an x register in the hart). So a
/// trap, an MMIO access or a look from the dispatcher sees exactly the interpreter's state.
#[derive(Clone, Copy, Default)]
struct Cache {
    /// Guest register -> host register + 1 (0: not cached).
    host: [u8; 32],
    /// Cached guest registers (bit r).
    cached: u32,
    /// Cached guest registers whose host copy is newer than the hart's (bit r).
    dirty: u32,
}

// dynasm expands a register chosen at run time (`Rq(h)`) to `h.into()`.
#[allow(clippy::useless_conversion)]
impl Cache {
    /// Choose the registers to keep for these ops: the most used (read or written by inline
    /// integer code), up to four, each used more often than the loads it costs (one at
    /// entry, one after each call or F/D instruction).
    fn choose(ops: &[(Op, u64)]) -> Cache {
        use Kind::*;
        let mut uses = [0u32; 32];
        let mut barriers = 0;
        for (op, _) in ops {
            let (r1, r2, w) = match op.kind {
                Lui | Auipc => (None, None, Some(op.rd)),
                Addi | Xori | Ori | Andi | Slti | Sltiu | Slli | Srli | Srai | Addiw | Slliw
                | Srliw | Sraiw => (Some(op.rs1), None, Some(op.rd)),
                Add | Sub | Xor | Or | And | Slt | Sltu | Sll | Srl | Sra | Mul | Mulh | Mulhu
                | Addw | Subw | Sllw | Srlw | Sraw | Mulw => {
                    (Some(op.rs1), Some(op.rs2), Some(op.rd))
                }
                Lb | Lh | Lw | Ld | Lbu | Lhu | Lwu => (Some(op.rs1), None, Some(op.rd)),
                Sb | Sh | Sw | Sd | Beq | Bne | Blt | Bge | Bltu | Bgeu => {
                    (Some(op.rs1), Some(op.rs2), None)
                }
                Jalr => (Some(op.rs1), None, None),
                Jal | Fence => (None, None, None),
                _ => {
                    barriers += 1;
                    (None, None, None)
                }
            };
            for r in [r1, r2, w].into_iter().flatten() {
                uses[(r & 31) as usize] += 1;
            }
        }
        uses[0] = 0;
        let mut order: Vec<usize> = (1..32).filter(|&r| uses[r] >= 2 + barriers).collect();
        // Most used first; ties by register number, so the choice depends on the ops alone.
        order.sort_by_key(|&r| (std::cmp::Reverse(uses[r]), r));
        let mut c = Cache::default();
        for (&r, &h) in order.iter().zip(CACHE_REGS.iter()) {
            c.host[r] = h + 1;
            c.cached |= 1 << r;
        }
        c
    }

    fn src(&self, r: u8) -> Src {
        match self.host[(r & 31) as usize] {
            0 => Src::Mem(xr(r)),
            h => Src::Reg(h - 1),
        }
    }

    /// Store rax as the new value of x[rd] (nothing for x0).
    fn put(&mut self, a: &mut VecAssembler<X64Relocation>, rd: u8) {
        let r = (rd & 31) as usize;
        match self.host[r] {
            _ if r == 0 => {}
            0 => dynasm!(a ; .arch x64 ; mov [rbx + xr(rd)], rax),
            h => {
                dynasm!(a ; .arch x64 ; mov Rq(h - 1), rax);
                self.dirty |= 1 << r;
            }
        }
    }

    /// Store the dirty registers to the hart.
    fn sync(&mut self, a: &mut VecAssembler<X64Relocation>) {
        for r in 1..32u8 {
            if self.dirty & (1 << r) != 0 {
                let h = self.host[r as usize] - 1;
                dynasm!(a ; .arch x64 ; mov [rbx + xr(r)], Rq(h));
            }
        }
        self.dirty = 0;
    }

    /// Set x[rd] to the constant `v` (nothing for x0).
    fn put_const(&mut self, a: &mut VecAssembler<X64Relocation>, rd: u8, v: i64) {
        match self.src(rd) {
            _ if rd & 31 == 0 => {}
            Src::Mem(o) if v as i32 as i64 == v => {
                dynasm!(a ; .arch x64 ; mov QWORD [rbx + o], v as i32)
            }
            _ => {
                dynasm!(a ; .arch x64 ; mov rax, QWORD v);
                self.put(a, rd);
            }
        }
    }

    /// Load every cached register from the hart (after a call, and at entry).
    fn reload_all(&self, a: &mut VecAssembler<X64Relocation>) {
        for r in 1..32u8 {
            if let Src::Reg(h) = self.src(r) {
                dynasm!(a ; .arch x64 ; mov Rq(h), QWORD [rbx + xr(r)]);
            }
        }
    }
}

type EnterFn = unsafe extern "sysv64" fn(*mut Ctx, *mut Hart, u64) -> u64;

struct Block {
    vpc: u64,
    off: usize,
    code: u64,
    live: bool,
    /// Its instruction count.
    len: u32,
    /// Where its link slots are (offsets of rel32 fields from `code`): only these are patched.
    slots: Box<[u32]>,
}

pub(crate) struct Jit {
    mem: *mut u8,
    used: usize,
    /// Where the first block may go (after the entry, exit and chain stubs).
    stubs_end: usize,
    enter: EnterFn,
    exit: u64,
    chain: u64,
    chain_link: u64,
    blocks: Vec<Block>,
    map: HashMap<(u64, usize), u32>,
    by_page: HashMap<usize, Vec<u32>>,
    /// One jump cache per hart (entries are tagged with that hart's translation generation),
    /// made when the hart first runs; `cur` is the hart that holds the code cache now.
    jcs: Vec<Box<[JcEntry]>>,
    cur: usize,
    pub(crate) stats: JitStats,
}

// SAFETY: the code memory and every pointer into it are owned by this value alone; moving it
// to another thread moves them together, and it is never shared.
unsafe impl Send for Jit {}

impl Drop for Jit {
    fn drop(&mut self) {
        // SAFETY: `mem` is the start of a CODE_BYTES mapping made in `new` and used by nothing
        // else once the hart that owns this value is gone.
        unsafe {
            libc::munmap(self.mem as *mut libc::c_void, CODE_BYTES);
        }
    }
}

/// A jump-cache entry's generation: the translation flushes so far and the privilege level
/// (fetch translations are per level, see [`fetch_tag`]).
fn jc_gen(gen: u64, p: crate::Priv) -> u64 {
    (gen << 2) | p as u64
}

fn jc_index(vpc: u64) -> usize {
    (((vpc >> 1) ^ (vpc >> (JC_BITS + 1))) as usize) & (JC_SIZE - 1)
}

impl Jit {
    /// A translator with an empty code cache; None if executable memory cannot be mapped.
    pub(crate) fn new() -> Option<Box<Jit>> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CODE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return None;
        }
        let mem = mem as *mut u8;
        let base = mem as usize;
        let mut ops: VecAssembler<X64Relocation> = VecAssembler::new(base);
        let exit_l = ops.new_dynamic_label();
        dynasm!(ops
            ; .arch x64
            // enter(ctx = rdi, hart = rsi, code = rdx)
            ; push rbx
            ; push rbp
            ; push r12
            ; push r13
            ; push r14
            ; push r15
            ; sub rsp, 8
            ; mov r13, rdi
            ; mov rbx, rsi
            ; mov r12, [r13 + C_RAM]
            ; mov r14, [r13 + C_END]
            ; mov rbp, [r13 + C_LOAD_TLB]
            ; mov r15, [rbx + H_COUNT]
            ; jmp rdx
        );
        let exit_off = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; =>exit_l
            ; add rsp, 8
            ; pop r15
            ; pop r14
            ; pop r13
            ; pop r12
            ; pop rbp
            ; pop rbx
            ; ret
        );
        let chain_off = ops.offset().0;
        // chain: rdi = the next pc; count (r15) is stored. Store pc; enter the next block if
        // the jump cache has it under this generation (the block checks the budget), else
        // return to the dispatcher.
        emit_lookup(&mut ops, None, exit_l);
        // chain_link: an unlinked direct jump to a pc in the same virtual page (rsi = the
        // address of its rel32, rdx = its block, rdi = the pc; count is stored): store pc and
        // leave the link to the dispatcher, which makes it only if the target block was read
        // from the same physical page. (Linking here to the block that the jump cache has
        // under this generation is not enough: a page table entry changed without
        // SFENCE.VMA lets this block, entered through the jump cache under the old mapping,
        // and a block translated through a fresh walk under the new one share a
        // generation, and a link between two physical pages would outlive the fence that
        // restores the mapping, and stores to the target's page would not drop it.)
        let chain_link_off = ops.offset().0;
        dynasm!(ops
            ; .arch x64
            ; mov [rbx + H_PC], rdi
            ; mov [r13 + C_LINK_SLOT], rsi
            ; mov [r13 + C_LINK_FROM], rdx
            ; mov [r13 + C_LINK_PC], rdi
            ; jmp =>exit_l
        );
        let code = ops.finalize().ok()?;
        // SAFETY: the mapping is CODE_BYTES long and the stubs are a few hundred bytes.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem, code.len()) };
        // SAFETY: the entry stub was just written at the mapping's start and follows the
        // sysv64 convention with this signature.
        let enter: EnterFn = unsafe { std::mem::transmute::<*mut u8, EnterFn>(mem) };
        Some(Box::new(Jit {
            mem,
            used: code.len().next_multiple_of(16),
            stubs_end: code.len().next_multiple_of(16),
            enter,
            exit: (base + exit_off) as u64,
            chain: (base + chain_off) as u64,
            chain_link: (base + chain_link_off) as u64,
            blocks: Vec::new(),
            map: HashMap::new(),
            by_page: HashMap::new(),
            jcs: vec![vec![EMPTY; JC_SIZE].into_boxed_slice()],
            cur: 0,
            stats: JitStats::default(),
        }))
    }

    /// The hart `hart` runs from now on: its jump cache is the one in use.
    pub(crate) fn select(&mut self, hart: usize) {
        while self.jcs.len() <= hart {
            self.jcs.push(vec![EMPTY; JC_SIZE].into_boxed_slice());
        }
        self.cur = hart;
    }

    fn jc(&self) -> &[JcEntry] {
        &self.jcs[self.cur]
    }

    /// Drop the blocks read from RAM page `page`; true if there were any.
    pub(crate) fn invalidate_page(&mut self, page: usize) -> bool {
        let Some(ids) = self.by_page.remove(&page) else {
            return false;
        };
        for id in ids {
            let b = &mut self.blocks[id as usize];
            if !b.live {
                continue;
            }
            b.live = false;
            self.map.remove(&(b.vpc, b.off));
            for jc in &mut self.jcs {
                let e = &mut jc[jc_index(b.vpc)];
                if e.code == b.code {
                    *e = EMPTY;
                }
            }
        }
        true
    }

    /// Point the direct jump whose rel32 is at `slot`, in block `from`, at block `to`, if both
    /// are live and read from the same page (a link never leaves its page, so dropping a
    /// page's blocks drops every link into them too).
    fn link(&mut self, slot: u64, from: u32, to: u32) {
        let (Some(f), Some(t)) = (self.blocks.get(from as usize), self.blocks.get(to as usize))
        else {
            return;
        };
        if !f.live || !t.live || f.off >> 12 != t.off >> 12 {
            return;
        }
        let is_slot = slot
            .checked_sub(f.code)
            .and_then(|o| u32::try_from(o).ok())
            .is_some_and(|o| f.slots.contains(&o));
        if !is_slot {
            return;
        }
        let rel = t.code.wrapping_sub(slot + 4) as i64;
        let Ok(rel) = i32::try_from(rel) else { return };
        // SAFETY: `slot` lies inside a live block's code in this mapping (checked above and
        // made so by `emit`), and no translated code runs while the dispatcher links.
        unsafe { (slot as *mut [u8; 4]).write_unaligned(rel.to_le_bytes()) };
        self.stats.links += 1;
    }

    /// Forget every block and reuse the code memory (only between block runs).
    fn reset(&mut self) {
        self.blocks.clear();
        self.map.clear();
        self.by_page.clear();
        for jc in &mut self.jcs {
            jc.fill(EMPTY);
        }
        self.used = self.stubs_end;
        self.stats.full_flushes += 1;
    }
}

/// Run one instruction that translated code does not do inline, through the interpreter.
/// Returns nonzero when the block must return to the dispatcher.
///
/// # Safety
/// `hart` and `ctx` are the pointers the dispatcher passed to the entry stub (live, and not
/// used by anyone else while translated code runs), and `ctx.bus` points to a live `B`.
/// `op_lo` and `op_hi` are the instruction's op, packed ([`Op::pack`]).
unsafe extern "sysv64" fn helper_exec<B: Bus>(
    hart: *mut Hart,
    ctx: *mut Ctx,
    op_lo: u64,
    op_hi: u64,
    pc: u64,
) -> u64 {
    // SAFETY: see the function's contract.
    let (h, bus) = unsafe { (&mut *hart, &mut *((*ctx).bus as *mut B)) };
    let op = Op::unpack([op_lo, op_hi]);
    h.pc = pc;
    if let Err(t) = h.exec(bus, op) {
        h.take_trap(t);
        h.count += 1;
        return 1;
    }
    (h.brk || h.mmu.jit_exit) as u64
}

/// Whether an op ends its block.
fn ends_block(k: Kind) -> bool {
    use Kind::*;
    matches!(
        k,
        Jal | Jalr
            | Beq
            | Bne
            | Blt
            | Bge
            | Bltu
            | Bgeu
            | System
            | Illegal
            | Undecoded
            | FetchFault
    )
}

/// Read the instructions of a block at RAM offset `off`, virtual address `vpc`.
fn read_block(ram: &[u8], vpc: u64, off: usize) -> Vec<(Op, u64)> {
    let mut out = Vec::new();
    let (mut pc, mut p) = (vpc, off);
    while out.len() < MAX_BLOCK {
        let Some(lo) = ram.get(p..p + 2) else { break };
        let lo = u16::from_le_bytes([lo[0], lo[1]]) as u32;
        let raw = if lo & 3 == 3 {
            if pc & 0xfff > 0xffc {
                break; // it would cross into the next page
            }
            let Some(hi) = ram.get(p + 2..p + 4) else {
                break;
            };
            lo | (u16::from_le_bytes([hi[0], hi[1]]) as u32) << 16
        } else {
            lo
        };
        let op = decode(raw);
        out.push((op, pc));
        pc = pc.wrapping_add(op.len as u64);
        p += op.len as usize;
        if ends_block(op.kind) || pc & 0xfff == 0 {
            break;
        }
    }
    out
}

/// The TLB-hit test of a load or store of `size` bytes at x[rs1] + imm (`s1` is where x[rs1]
/// is): jumps to `slow` on a miss or a page-crossing access, else leaves the RAM offset in
/// rax. Clobbers rcx, rdx, rsi.
fn emit_tlb(
    a: &mut VecAssembler<X64Relocation>,
    s1: Src,
    imm: i32,
    size: i32,
    store: bool,
    slow: dynasmrt::DynamicLabel,
) {
    // rsi = vaddr; rcx = entry index * 16; rdx = the TLB.
    s1.load(a, RSI);
    dynasm!(a
        ; .arch x64
        ; add rsi, imm
        ; mov rax, rsi
        ; shr rax, 12
        ; mov ecx, eax
        ; and ecx, (TLB_ENTRIES - 1) as i32
        ; shl ecx, 4
    );
    if store {
        dynasm!(a ; .arch x64 ; mov rdx, [r13 + C_STORE_TLB]);
    } else {
        dynasm!(a ; .arch x64 ; mov rdx, rbp);
    }
    // The entry's tag: the page number and the data privilege and mstatus bits.
    dynasm!(a
        ; .arch x64
        ; or rax, [rbx + H_DTAG]
        ; cmp rax, [rdx + rcx]
        ; jne =>slow
    );
    if size > 1 {
        dynasm!(a
            ; .arch x64
            ; mov eax, esi
            ; and eax, 0xfff
            ; cmp eax, 4096 - size
            ; ja =>slow
        );
    }
    dynasm!(a
        ; .arch x64
        ; mov rax, [rdx + rcx + 8]
        ; and esi, 0xfff
        ; add rax, rsi
    );
}

const H_F: i32 = offset_of!(Hart, f) as i32;
const H_MSTATUS: i32 = offset_of!(Hart, csr.mstatus) as i32;
const H_FFLAGS: i32 = offset_of!(Hart, csr.fflags) as i32;
const H_FRM: i32 = offset_of!(Hart, csr.frm) as i32;
/// mstatus.FS (both bits): zero is Off (F/D instructions are illegal); set both is Dirty.
const FS_BITS: i32 = crate::csr::MSTATUS_FS as i32;

fn fr(r: u32) -> i32 {
    H_F + 8 * (r & 31) as i32
}

/// Whether an F/D instruction has an inline form: double loads and stores, single loads and
/// stores, sign injection and moves of doubles, and double add, subtract, multiply, divide and
/// square root under round-to-nearest-even (static, or dynamic with frm checked at run time).
fn fp_inline(insn: u32) -> bool {
    let f3 = (insn >> 12) & 7;
    let rs2 = (insn >> 20) & 31;
    match insn & 0x7f {
        0x07 | 0x27 => f3 == 2 || f3 == 3,
        0x53 => match insn >> 25 {
            0x01 | 0x05 | 0x09 | 0x0d => f3 == 0 || f3 == 7,
            0x2d => rs2 == 0 && (f3 == 0 || f3 == 7),
            0x11 => f3 <= 2,
            0x71 | 0x79 => f3 == 0 && rs2 == 0,
            _ => false,
        },
        _ => false,
    }
}

/// Emit an F/D instruction that [`fp_inline`] accepts; `slow` runs it through the interpreter.
///
/// Arithmetic takes the host FPU only where its result and flags are certainly softfloat's,
/// the interpreter's own gate (`Format::hard`): rounding to nearest-even, fflags' inexact bit
/// already set, operands zero or normal (the divisor normal; the square root's operand
/// normal and positive), and a finite result above the smallest normal. Everything else goes
/// to `slow`. Clobbers rax, rcx, rdx, rsi, r8, r9, xmm0, xmm1.
fn emit_fp(a: &mut VecAssembler<X64Relocation>, insn: u32, slow: dynasmrt::DynamicLabel) {
    let rd = (insn >> 7) & 31;
    let rs1 = (insn >> 15) & 31;
    let rs2 = (insn >> 20) & 31;
    let f3 = (insn >> 12) & 7;
    // F/D instructions are illegal while mstatus.FS is Off.
    dynasm!(a
        ; .arch x64
        ; test DWORD [rbx + H_MSTATUS], FS_BITS
        ; jz =>slow
    );
    let dirty = |a: &mut VecAssembler<X64Relocation>| {
        dynasm!(a ; .arch x64 ; or DWORD [rbx + H_MSTATUS], FS_BITS);
    };
    match insn & 0x7f {
        0x07 => {
            // FLW/FLD: the I-immediate.
            let size = if f3 == 3 { 8 } else { 4 };
            emit_tlb(
                a,
                Src::Mem(xr(rs1 as u8)),
                (insn as i32) >> 20,
                size,
                false,
                slow,
            );
            if size == 8 {
                dynasm!(a ; .arch x64 ; mov rax, QWORD [r12 + rax]);
            } else {
                // NaN-boxed.
                dynasm!(a
                    ; .arch x64
                    ; mov eax, DWORD [r12 + rax]
                    ; mov rcx, QWORD -0x1_0000_0000
                    ; or rax, rcx
                );
            }
            dynasm!(a ; .arch x64 ; mov [rbx + fr(rd)], rax);
            dirty(a);
        }
        0x27 => {
            // FSW/FSD: the S-immediate.
            let simm = (((insn as i32) >> 25) << 5) | ((insn >> 7) & 31) as i32;
            let size = if f3 == 3 { 8 } else { 4 };
            emit_tlb(a, Src::Mem(xr(rs1 as u8)), simm, size, true, slow);
            dynasm!(a ; .arch x64 ; mov rcx, [rbx + fr(rs2)]);
            if size == 8 {
                dynasm!(a ; .arch x64 ; mov QWORD [r12 + rax], rcx);
            } else {
                dynasm!(a ; .arch x64 ; mov DWORD [r12 + rax], ecx);
            }
        }
        _ => match insn >> 25 {
            0x11 => {
                // FSGNJ.D / FSGNJN.D / FSGNJX.D
                dynasm!(a
                    ; .arch x64
                    ; mov rax, [rbx + fr(rs1)]
                    ; mov rcx, [rbx + fr(rs2)]
                    ; mov rdx, QWORD i64::MIN
                );
                match f3 {
                    0 => {
                        dynasm!(a ; .arch x64 ; and rcx, rdx ; not rdx ; and rax, rdx ; or rax, rcx)
                    }
                    1 => {
                        dynasm!(a ; .arch x64 ; not rcx ; and rcx, rdx ; not rdx ; and rax, rdx ; or rax, rcx)
                    }
                    _ => dynasm!(a ; .arch x64 ; and rcx, rdx ; xor rax, rcx),
                }
                dynasm!(a ; .arch x64 ; mov [rbx + fr(rd)], rax);
                dirty(a);
            }
            0x71 => {
                // FMV.X.D
                if rd != 0 {
                    dynasm!(a
                        ; .arch x64
                        ; mov rax, [rbx + fr(rs1)]
                        ; mov [rbx + xr(rd as u8)], rax
                    );
                }
                dirty(a);
            }
            0x79 => {
                // FMV.D.X
                dynasm!(a
                    ; .arch x64
                    ; mov rax, [rbx + xr(rs1 as u8)]
                    ; mov [rbx + fr(rd)], rax
                );
                dirty(a);
            }
            f7 => {
                // Rounding: static RNE, or dynamic with frm = RNE; inexact already set.
                if f3 == 7 {
                    dynasm!(a
                        ; .arch x64
                        ; cmp QWORD [rbx + H_FRM], 0
                        ; jne =>slow
                    );
                }
                dynasm!(a
                    ; .arch x64
                    ; test BYTE [rbx + H_FFLAGS], 1
                    ; jz =>slow
                    ; mov rax, [rbx + fr(rs1)]
                    ; mov rdx, [rbx + fr(rs2)]
                );
                // `normal(reg)`: the exponent field is 1..=0x7fe (clobbers rcx).
                macro_rules! normal {
                    ($r:tt) => {
                        dynasm!(a
                            ; .arch x64
                            ; mov rcx, $r
                            ; shr rcx, 52
                            ; and ecx, 0x7ff
                            ; dec ecx
                            ; cmp ecx, 0x7fd
                            ; ja =>slow
                        );
                    };
                }
                // `plain(reg)`: zero or normal.
                macro_rules! plain {
                    ($r:tt) => {{
                        let ok = a.new_dynamic_label();
                        dynasm!(a
                            ; .arch x64
                            ; mov rcx, $r
                            ; shl rcx, 1
                            ; jz =>ok
                        );
                        normal!($r);
                        dynasm!(a ; .arch x64 ; =>ok);
                    }};
                }
                match f7 {
                    0x2d => {
                        dynasm!(a ; .arch x64 ; test rax, rax ; js =>slow);
                        normal!(rax);
                    }
                    0x0d => {
                        plain!(rax);
                        normal!(rdx);
                    }
                    _ => {
                        plain!(rax);
                        plain!(rdx);
                    }
                }
                dynasm!(a
                    ; .arch x64
                    ; movq xmm0, rax
                    ; movq xmm1, rdx
                );
                match f7 {
                    0x01 => dynasm!(a ; .arch x64 ; addsd xmm0, xmm1),
                    0x05 => dynasm!(a ; .arch x64 ; subsd xmm0, xmm1),
                    0x09 => dynasm!(a ; .arch x64 ; mulsd xmm0, xmm1),
                    0x0d => dynasm!(a ; .arch x64 ; divsd xmm0, xmm1),
                    _ => dynasm!(a ; .arch x64 ; sqrtsd xmm0, xmm0),
                }
                // The result's magnitude must be above the smallest normal and finite:
                // 2|r| - (2*MIN_POSITIVE + 1) < 2*INFINITY - (2*MIN_POSITIVE + 1), unsigned.
                dynasm!(a
                    ; .arch x64
                    ; movq rax, xmm0
                    ; mov rcx, rax
                    ; shl rcx, 1
                    ; mov r8, QWORD 0x0020_0000_0000_0001
                    ; sub rcx, r8
                    ; mov r9, QWORD (0xffe0_0000_0000_0000u64 - 0x0020_0000_0000_0001) as i64
                    ; cmp rcx, r9
                    ; jae =>slow
                    ; mov [rbx + fr(rd)], rax
                );
                dirty(a);
            }
        },
    }
}

/// Run instruction `i` of the block (`op`, at `pc`) through [`helper_exec`], with the count
/// stored first; go to `exit` if the block must return to the dispatcher. The op goes in
/// registers, packed ([`Op::pack`]): a pointer to a copy of it elsewhere would be a load that
/// misses the cache (half of `helper_exec`'s own samples, before, under a redis load).
fn emit_helper(
    a: &mut VecAssembler<X64Relocation>,
    i: usize,
    op: Op,
    pc: u64,
    exit: dynasmrt::DynamicLabel,
) {
    let [lo, hi] = op.pack();
    dynasm!(a
        ; .arch x64
        ; lea rax, [r15 + i as i32]
        ; mov [rbx + H_COUNT], rax
        ; mov rdi, rbx
        ; mov rsi, r13
        ; mov rdx, QWORD lo as i64
        ; mov rcx, QWORD hi as i64
        ; mov r8, QWORD pc as i64
        ; call QWORD [r13 + C_HELPER]
        ; test eax, eax
        ; jnz =>exit
    );
}

/// Store the pc in rdi and enter its block if the jump cache has it under this generation (the
/// block checks the budget), else go to `miss`. `known`: the pc is this constant, whose slot
/// is computed here.
fn emit_lookup(
    a: &mut VecAssembler<X64Relocation>,
    known: Option<u64>,
    miss: dynasmrt::DynamicLabel,
) {
    dynasm!(a ; .arch x64 ; mov [rbx + H_PC], rdi);
    match known {
        Some(t) => dynasm!(a
            ; .arch x64
            ; mov eax, (jc_index(t) * std::mem::size_of::<JcEntry>()) as i32
        ),
        None => dynasm!(a
            ; .arch x64
            ; mov rax, rdi
            ; mov rcx, rdi
            ; shr rax, 1
            ; shr rcx, JC_BITS as i8 + 1
            ; xor eax, ecx
            ; and eax, (JC_SIZE - 1) as i32
            ; shl rax, 5
        ),
    }
    dynasm!(a
        ; .arch x64
        ; add rax, [r13 + C_JC]
        ; cmp rdi, [rax]
        ; jne =>miss
        ; mov rcx, [r13 + C_GEN]
        ; cmp rcx, [rax + 8]
        ; jne =>miss
        ; jmp QWORD [rax + 16]
    );
}

/// Go on at the pc in rdi (count is stored): the chain stub's lookup, emitted at the jump
/// itself so that each jump has a host indirect branch of its own, which the host predicts by
/// its own history (through the one shared stub, every guest return and cross-page jump went
/// through one indirect branch, on which 7-8% of the runner's samples fell under a redis
/// load). A miss returns to the dispatcher. `known` as for [`emit_lookup`].
fn emit_chain(a: &mut VecAssembler<X64Relocation>, known: Option<u64>) {
    let miss = a.new_dynamic_label();
    emit_lookup(a, known, miss);
    dynasm!(a ; .arch x64 ; =>miss ; jmp QWORD [r13 + C_EXIT]);
}

/// Emit block `id` at address `base`. `ops` holds the ops and their pcs. Returns the offsets
/// of its link slots (rel32 fields of direct jumps to blocks in the same page, which the
/// dispatcher patches once the target exists) and how many guest registers it keeps in host
/// registers.
// dynasm expands a register chosen at run time (`Rq(h)`) to `h.into()`.
#[allow(clippy::useless_conversion)]
fn emit(
    a: &mut VecAssembler<X64Relocation>,
    base: usize,
    id: u32,
    ops: &[(Op, u64)],
) -> (Vec<usize>, u32) {
    let exit = a.new_dynamic_label();
    let budget = a.new_dynamic_label();
    let n = ops.len() as i32;
    let vpc = ops[0].1;
    // Slow paths: their label, where they resume, the instruction, the cache state there.
    let mut tail: Vec<(dynasmrt::DynamicLabel, dynasmrt::DynamicLabel, usize, Cache)> = Vec::new();
    let mut links: Vec<(dynasmrt::DynamicLabel, u64, usize)> = Vec::new();
    let mut ended = false;
    // Enter only if the budget covers the whole block (dispatcher and chained jumps alike).
    dynasm!(a
        ; .arch x64
        ; lea rax, [r15 + n]
        ; cmp rax, r14
        ; ja =>budget
    );
    let mut c = Cache::choose(ops);
    let kept = c.cached.count_ones();
    c.reload_all(a);
    // A jump to a known pc: linked directly when it stays in this page (the same physical
    // page, as long as this block runs), else through the jump cache.
    let mut jump_to = |a: &mut VecAssembler<X64Relocation>, t: u64| {
        if t >> 12 == vpc >> 12 {
            let l = a.new_dynamic_label();
            dynasm!(a ; .arch x64 ; jmp =>l);
            links.push((l, t, a.offset().0 - 4));
        } else {
            dynasm!(a ; .arch x64 ; mov rdi, QWORD t as i64);
            emit_chain(a, Some(t));
        }
    };
    for (i, (op, pc)) in ops.iter().enumerate() {
        let (op, pc) = (*op, *pc);
        let rd = op.rd & 31;
        let d = xr(op.rd);
        let (s1, s2) = (c.src(op.rs1), c.src(op.rs2));
        let imm = op.imm;
        let next = pc.wrapping_add(op.len as u64);
        use Kind::*;
        // `$op rax, x[rs2]` (or eax and its low half), from the hart or a host register.
        macro_rules! with_s2 {
            ($op:ident) => {
                match s2 {
                    Src::Mem(o) => dynasm!(a ; .arch x64 ; $op rax, QWORD [rbx + o]),
                    Src::Reg(h) => dynasm!(a ; .arch x64 ; $op rax, Rq(h)),
                }
            };
        }
        macro_rules! with_s2w {
            ($op:ident) => {
                match s2 {
                    Src::Mem(o) => dynasm!(a ; .arch x64 ; $op eax, DWORD [rbx + o]),
                    Src::Reg(h) => dynasm!(a ; .arch x64 ; $op eax, Rd(h)),
                }
            };
        }
        // rax = x[rs1] op ..., then x[rd] = rax.
        macro_rules! rr {
            ($($t:tt)*) => {
                if rd != 0 {
                    s1.load(a, RAX);
                    dynasm!(a ; .arch x64 $($t)*);
                    c.put(a, op.rd);
                }
            };
        }
        // rax = x[rs1] op x[rs2] (64 bits).
        macro_rules! rr2 {
            ($op:ident) => {
                if rd != 0 {
                    s1.load(a, RAX);
                    with_s2!($op);
                    c.put(a, op.rd);
                }
            };
        }
        // rax = x[rs1] compared with x[rs2], set by `$set`.
        macro_rules! slt {
            ($set:ident) => {
                if rd != 0 {
                    s1.load(a, RAX);
                    with_s2!(cmp);
                    dynasm!(a ; .arch x64 ; $set al ; movzx eax, al);
                    c.put(a, op.rd);
                }
            };
        }
        // rax = x[rs1] shifted by x[rs2] (in cl).
        macro_rules! shift {
            ($($t:tt)*) => {
                if rd != 0 {
                    s2.load(a, RCX);
                    rr!($($t)*);
                }
            };
        }
        // The 32-bit forms: eax = x[rs1] (low half) op ..., sign-extended into x[rd].
        macro_rules! rrw {
            ($($t:tt)*) => {
                if rd != 0 {
                    s1.load32(a, RAX);
                    dynasm!(a ; .arch x64 $($t)* ; movsxd rax, eax);
                    c.put(a, op.rd);
                }
            };
        }
        macro_rules! rrw2 {
            ($op:ident) => {
                if rd != 0 {
                    s1.load32(a, RAX);
                    with_s2w!($op);
                    dynasm!(a ; .arch x64 ; movsxd rax, eax);
                    c.put(a, op.rd);
                }
            };
        }
        macro_rules! shiftw {
            ($($t:tt)*) => {
                if rd != 0 {
                    s2.load(a, RCX);
                    rrw!($($t)*);
                }
            };
        }
        // Block end: count the block, store it, jump to `next pc` (in rdi) through the chain.
        macro_rules! finish {
            () => {
                dynasm!(a
                    ; .arch x64
                    ; add r15, n
                    ; mov [rbx + H_COUNT], r15
                );
            };
        }
        match op.kind {
            Lui => c.put_const(a, op.rd, imm as i64),
            Addi if op.rs1 == 0 => c.put_const(a, op.rd, imm as i64),
            Auipc => c.put_const(a, op.rd, pc.wrapping_add(imm as i64 as u64) as i64),
            Addi => rr!(; add rax, imm),
            Xori => rr!(; xor rax, imm),
            Ori => rr!(; or rax, imm),
            Andi => rr!(; and rax, imm),
            Slti => rr!(; cmp rax, imm ; setl al ; movzx eax, al),
            Sltiu => rr!(; cmp rax, imm ; setb al ; movzx eax, al),
            Slli => rr!(; shl rax, (imm & 63) as i8),
            Srli => rr!(; shr rax, (imm & 63) as i8),
            Srai => rr!(; sar rax, (imm & 63) as i8),
            Addiw => rrw!(; add eax, imm),
            Slliw => rrw!(; shl eax, (imm & 31) as i8),
            Srliw => rrw!(; shr eax, (imm & 31) as i8),
            Sraiw => rrw!(; sar eax, (imm & 31) as i8),
            Add => rr2!(add),
            Sub => rr2!(sub),
            Xor => rr2!(xor),
            Or => rr2!(or),
            And => rr2!(and),
            Slt => slt!(setl),
            Sltu => slt!(setb),
            Sll => shift!(; shl rax, cl),
            Srl => shift!(; shr rax, cl),
            Sra => shift!(; sar rax, cl),
            Mul => rr2!(imul),
            Mulh | Mulhu => {
                if rd != 0 {
                    // rdx:rax = rax * x[rs2], signed or not; the high half is the result.
                    s1.load(a, RAX);
                    s2.load(a, RCX);
                    match op.kind {
                        Mulh => dynasm!(a ; .arch x64 ; imul rcx),
                        _ => dynasm!(a ; .arch x64 ; mul rcx),
                    }
                    dynasm!(a ; .arch x64 ; mov rax, rdx);
                    c.put(a, op.rd);
                }
            }
            Addw => rrw2!(add),
            Subw => rrw2!(sub),
            Sllw => shiftw!(; shl eax, cl),
            Srlw => shiftw!(; shr eax, cl),
            Sraw => shiftw!(; sar eax, cl),
            Mulw => rrw2!(imul),
            Fence => {}
            Lb | Lh | Lw | Ld | Lbu | Lhu | Lwu | Sb | Sh | Sw | Sd => {
                let size: i32 = match op.kind {
                    Lb | Lbu | Sb => 1,
                    Lh | Lhu | Sh => 2,
                    Lw | Lwu | Sw => 4,
                    _ => 8,
                };
                let store = matches!(op.kind, Sb | Sh | Sw | Sd);
                let slow = a.new_dynamic_label();
                let resume = a.new_dynamic_label();
                // The slow path starts from the state before this instruction.
                tail.push((slow, resume, i, c));
                emit_tlb(a, s1, imm, size, store, slow);
                if store {
                    s2.load(a, RCX);
                }
                match op.kind {
                    Lb => dynasm!(a ; .arch x64 ; movsx rax, BYTE [r12 + rax]),
                    Lbu => dynasm!(a ; .arch x64 ; movzx eax, BYTE [r12 + rax]),
                    Lh => dynasm!(a ; .arch x64 ; movsx rax, WORD [r12 + rax]),
                    Lhu => dynasm!(a ; .arch x64 ; movzx eax, WORD [r12 + rax]),
                    Lw => dynasm!(a ; .arch x64 ; movsxd rax, DWORD [r12 + rax]),
                    Lwu => dynasm!(a ; .arch x64 ; mov eax, DWORD [r12 + rax]),
                    Ld => dynasm!(a ; .arch x64 ; mov rax, QWORD [r12 + rax]),
                    Sb => dynasm!(a ; .arch x64 ; mov BYTE [r12 + rax], cl),
                    Sh => dynasm!(a ; .arch x64 ; mov WORD [r12 + rax], cx),
                    Sw => dynasm!(a ; .arch x64 ; mov DWORD [r12 + rax], ecx),
                    _ => dynasm!(a ; .arch x64 ; mov QWORD [r12 + rax], rcx),
                }
                if !store {
                    c.put(a, op.rd);
                }
                dynasm!(a ; .arch x64 ; =>resume);
            }
            Jal => {
                c.sync(a);
                if rd != 0 {
                    dynasm!(a ; .arch x64 ; mov rax, QWORD next as i64 ; mov [rbx + d], rax);
                }
                finish!();
                jump_to(a, pc.wrapping_add(imm as i64 as u64));
                ended = true;
            }
            Jalr => {
                s1.load(a, RDI);
                dynasm!(a
                    ; .arch x64
                    ; add rdi, imm
                    ; and rdi, -2
                );
                // x[rd] goes to the hart after the others (it may be a cached register).
                c.sync(a);
                if rd != 0 {
                    dynasm!(a ; .arch x64 ; mov rax, QWORD next as i64 ; mov [rbx + d], rax);
                }
                finish!();
                emit_chain(a, None);
                ended = true;
            }
            Beq | Bne | Blt | Bge | Bltu | Bgeu => {
                c.sync(a);
                finish!();
                let taken = a.new_dynamic_label();
                let t = pc.wrapping_add(imm as i64 as u64);
                s1.load(a, RAX);
                with_s2!(cmp);
                match op.kind {
                    Beq => dynasm!(a ; .arch x64 ; je =>taken),
                    Bne => dynasm!(a ; .arch x64 ; jne =>taken),
                    Blt => dynasm!(a ; .arch x64 ; jl =>taken),
                    Bge => dynasm!(a ; .arch x64 ; jge =>taken),
                    Bltu => dynasm!(a ; .arch x64 ; jb =>taken),
                    _ => dynasm!(a ; .arch x64 ; jae =>taken),
                }
                jump_to(a, next);
                dynasm!(a ; .arch x64 ; =>taken);
                jump_to(a, t);
                ended = true;
            }
            Fp if fp_inline(op.insn) => {
                // It reads and writes x registers in the hart and uses r8 and r9.
                c.sync(a);
                let slow = a.new_dynamic_label();
                let resume = a.new_dynamic_label();
                tail.push((slow, resume, i, c));
                emit_fp(a, op.insn, slow);
                dynasm!(a ; .arch x64 ; =>resume);
                c.reload_all(a);
            }
            _ => {
                c.sync(a);
                emit_helper(a, i, op, pc, exit);
                if !ends_block(op.kind) {
                    c.reload_all(a);
                } else {
                    // It retired without a reason to stop: go on at the pc it left.
                    dynasm!(a
                        ; .arch x64
                        ; lea r15, [r15 + n]
                        ; mov rdi, [rbx + H_PC]
                        ; jmp QWORD [r13 + C_CHAIN]
                    );
                    ended = true;
                }
            }
        }
        debug_assert!(!ended || i + 1 == ops.len());
    }
    if !ended {
        let (op, pc) = ops[ops.len() - 1];
        let next = pc.wrapping_add(op.len as u64);
        c.sync(a);
        dynasm!(a
            ; .arch x64
            ; add r15, n
            ; mov [rbx + H_COUNT], r15
        );
        jump_to(a, next);
    }
    // Unlinked direct jumps: leave what the dispatcher needs to link them, then chain.
    let mut slots = Vec::new();
    for (l, t, slot) in links {
        dynasm!(a
            ; .arch x64
            ; =>l
            ; mov rsi, QWORD (base + slot) as i64
            ; mov edx, id as i32
            ; mov rdi, QWORD t as i64
            ; jmp QWORD [r13 + C_CHAIN_LINK]
        );
        slots.push(slot);
    }
    dynasm!(a
        ; .arch x64
        ; =>budget
        ; mov rax, QWORD vpc as i64
        ; mov [rbx + H_PC], rax
        ; jmp QWORD [r13 + C_EXIT]
    );
    // Slow paths: the interpreter runs the instruction, from the hart; the call clobbers the
    // cached registers, which are loaded again (a load's result with them; an F/D
    // instruction's resume point loads them itself).
    for (slow, resume, i, mut c) in tail {
        dynasm!(a ; .arch x64 ; =>slow);
        c.sync(a);
        emit_helper(a, i, ops[i].0, ops[i].1, exit);
        if ops[i].0.kind != Kind::Fp {
            c.reload_all(a);
        }
        dynasm!(a ; .arch x64 ; jmp =>resume);
    }
    dynasm!(a
        ; .arch x64
        ; =>exit
        ; jmp QWORD [r13 + C_EXIT]
    );
    (slots, kept)
}

impl Hart {
    /// The translated block for the current pc, compiling it if need be: its code address and
    /// instruction count. None when the interpreter must take the next step (the fetch
    /// faults, or the first instruction crosses a page, or code memory cannot be had).
    fn jit_block<B: Bus>(&mut self, bus: &mut B) -> Option<(u64, u64, u32)> {
        let pc = self.pc;
        let gen = jc_gen(self.mmu.gen, self.prv);
        if let Some(jit) = &self.mmu.code.jit {
            let e = &jit.jc()[jc_index(pc)];
            if e.vpc == pc && e.gen == gen {
                return Some((e.code, e.n as u64, e.id));
            }
        }
        if pc & 0xfff == 0xffe {
            return None;
        }
        let off = match self.mmu.fetch.lookup_tagged(pc, fetch_tag(self.prv)) {
            Some(off) => off,
            None => match self.slow_ram(bus, pc, Access::Fetch) {
                Ok(Pa::Ram(off)) => off,
                _ => return None,
            },
        };
        let jit = self.mmu.code.jit.as_mut()?;
        let id = match jit.map.get(&(pc, off)) {
            Some(&id) => id,
            None => {
                let id = self.jit_compile(bus, pc, off)?;
                self.mmu.code.jit.as_mut()?.map.insert((pc, off), id);
                id
            }
        };
        let jit = self.mmu.code.jit.as_mut()?;
        let b = &jit.blocks[id as usize];
        let n = b.len;
        let code = b.code;
        let cur = jit.cur;
        jit.jcs[cur][jc_index(pc)] = JcEntry {
            vpc: pc,
            gen,
            code,
            n,
            id,
        };
        Some((code, n as u64, id))
    }

    fn jit_compile<B: Bus>(&mut self, bus: &mut B, vpc: u64, off: usize) -> Option<u32> {
        let t0 = Instant::now();
        let ops = read_block(bus.ram(), vpc, off);
        if ops.is_empty() {
            return None;
        }
        let page = off >> 12;
        // Stores to this page now take the slow path, which drops its blocks.
        self.mmu.ensure_code_page(page, bus.ram().len());
        let jit = self.mmu.code.jit.as_mut()?;
        if jit.used + MAX_BLOCK_BYTES > CODE_BYTES {
            jit.reset();
        }
        let base = jit.mem as usize + jit.used;
        let id = jit.blocks.len() as u32;
        let mut a: VecAssembler<X64Relocation> = VecAssembler::new(base);
        let (slots, kept) = emit(&mut a, base, id, &ops);
        let code = a.finalize().ok()?;
        if code.len() > MAX_BLOCK_BYTES {
            return None;
        }
        // Each link slot is the rel32 of a 5-byte `jmp` (E9), or linking would corrupt code.
        if slots
            .iter()
            .any(|&s| s == 0 || code.get(s - 1) != Some(&0xe9))
        {
            return None;
        }
        // SAFETY: `used + MAX_BLOCK_BYTES <= CODE_BYTES` was made sure above, and no
        // translated code runs while the dispatcher compiles.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), jit.mem.add(jit.used), code.len()) };
        jit.used = (jit.used + code.len()).next_multiple_of(16);
        jit.stats.blocks += 1;
        jit.stats.insns += ops.len() as u64;
        jit.stats.code_bytes += code.len() as u64;
        jit.stats.kept_regs += kept as u64;
        jit.blocks.push(Block {
            vpc,
            off,
            code: base as u64,
            live: true,
            len: ops.len() as u32,
            slots: slots.iter().map(|&o| o as u32).collect(),
        });
        jit.by_page.entry(page).or_default().push(id);
        jit.stats.compile_ns += t0.elapsed().as_nanos() as u64;
        Some(id)
    }

    /// Run to `end` or until the interpreter's loop would look again (`brk`), entering
    /// translated blocks where the budget covers them and stepping elsewhere. False if the
    /// host gives no executable memory (the caller falls back to the interpreter).
    pub(crate) fn jit_stretch<B: Bus>(
        &mut self,
        bus: &mut B,
        end: u64,
        stop_before: Option<u64>,
    ) -> bool {
        if self.mmu.code.jit.is_none() {
            match Jit::new() {
                Some(j) => self.mmu.code.jit = Some(j),
                None => return false,
            }
        }
        let j = self.mmu.code.jit.as_ref().expect("made above");
        let enter = j.enter;
        // The pointers and the generation are set before each entry.
        let mut ctx = Ctx {
            bus: std::ptr::null_mut(),
            store_tlb: std::ptr::null(),
            load_tlb: std::ptr::null(),
            ram: std::ptr::null_mut(),
            end,
            jc: std::ptr::null(),
            helper: helper_exec::<B> as *const () as usize,
            exit: j.exit as usize,
            chain: j.chain as usize,
            chain_link: j.chain_link as usize,
            gen: 0,
            link_slot: 0,
            link_from: 0,
            link_pc: 0,
        };
        while self.count < end && !self.brk {
            let link = std::mem::take(&mut ctx.link_slot);
            let resets = self.jit_stats().full_flushes;
            match self.jit_block(bus) {
                Some((code, n, id)) if n <= end - self.count => {
                    // (Not across a reset of the code memory: the slot would be stale.)
                    if link != 0
                        && ctx.link_pc == self.pc
                        && self.jit_stats().full_flushes == resets
                    {
                        if let Some(j) = &mut self.mmu.code.jit {
                            j.link(link, ctx.link_from as u32, id);
                        }
                    }
                    self.mmu.jit_exit = false;
                    ctx.gen = jc_gen(self.mmu.gen, self.prv);
                    if let Some(j) = &mut self.mmu.code.jit {
                        j.stats.dispatches += 1;
                        ctx.jc = j.jc().as_ptr();
                    }
                    // Pointers made afresh for each entry, after the last use of `bus` and
                    // `self` by reference: translated code and `helper_exec` use only these
                    // until `enter` returns.
                    ctx.store_tlb = self.mmu.store.as_ptr();
                    ctx.load_tlb = self.mmu.load.as_ptr();
                    ctx.ram = bus.ram().as_mut_ptr();
                    ctx.bus = bus as *mut B as *mut ();
                    let hart: *mut Hart = self;
                    // SAFETY: `code` is a live block of this hart's translator, entered
                    // through its entry stub with the context it expects; while it runs
                    // only it and `helper_exec` touch the hart and the bus, through these
                    // pointers, and no block is freed or moved before it returns.
                    unsafe { enter(&mut ctx, hart, code) };
                }
                Some(_) if stop_before.is_some_and(|start| self.count > start) => {
                    // A soft end inside this block, and steps were run since `start`: stop
                    // before the block.
                    return true;
                }
                Some(_) => {
                    // The budget ends inside this block: step the rest.
                    while self.count < end && !self.brk {
                        self.step(bus);
                    }
                }
                None => self.step(bus),
            }
        }
        true
    }
}
