//! Control and status registers (privileged spec 1.12).

use crate::{cause, irq, Bus, Hart, Priv, Trap};

pub const MSTATUS_SIE: u64 = 1 << 1;
pub const MSTATUS_MIE: u64 = 1 << 3;
pub const MSTATUS_SPIE: u64 = 1 << 5;
pub const MSTATUS_MPIE: u64 = 1 << 7;
pub const MSTATUS_SPP: u64 = 1 << 8;
pub const MSTATUS_MPP_SHIFT: u32 = 11;
pub const MSTATUS_MPP: u64 = 3 << MSTATUS_MPP_SHIFT;
pub const MSTATUS_FS: u64 = 3 << 13;
pub const MSTATUS_MPRV: u64 = 1 << 17;
pub const MSTATUS_SUM: u64 = 1 << 18;
pub const MSTATUS_MXR: u64 = 1 << 19;
pub const MSTATUS_TVM: u64 = 1 << 20;
pub const MSTATUS_TW: u64 = 1 << 21;
pub const MSTATUS_TSR: u64 = 1 << 22;
pub const MSTATUS_UXL: u64 = 3 << 32;
pub const MSTATUS_SD: u64 = 1 << 63;

const MSTATUS_WRITABLE: u64 = MSTATUS_SIE
    | MSTATUS_MIE
    | MSTATUS_SPIE
    | MSTATUS_MPIE
    | MSTATUS_SPP
    | MSTATUS_MPP
    | MSTATUS_FS
    | MSTATUS_MPRV
    | MSTATUS_SUM
    | MSTATUS_MXR
    | MSTATUS_TVM
    | MSTATUS_TW
    | MSTATUS_TSR;
pub(crate) const SSTATUS_MASK: u64 = MSTATUS_SIE
    | MSTATUS_SPIE
    | MSTATUS_SPP
    | MSTATUS_FS
    | MSTATUS_SUM
    | MSTATUS_MXR
    | MSTATUS_UXL
    | MSTATUS_SD;

/// Interrupts that exist on this hart.
const IRQ_ALL: u64 = irq::SSIP | irq::MSIP | irq::STIP | irq::MTIP | irq::SEIP | irq::MEIP;
const IRQ_S: u64 = irq::SSIP | irq::STIP | irq::SEIP;
/// Exceptions that may be delegated (ECALL from M cannot).
const MEDELEG_MASK: u64 = 0xb3ff;

/// xenvcfg.FIOM (no effect: one ordering for I/O and memory), CBIE (2 bits), CBCFE, CBZE.
pub const ENVCFG_CBIE_SHIFT: u32 = 4;
pub const ENVCFG_CBCFE: u64 = 1 << 6;
pub const ENVCFG_CBZE: u64 = 1 << 7;
/// menvcfg.PBMTE: Svpbmt's memory types in page-table entries.
pub const MENVCFG_PBMTE: u64 = 1 << 62;
const SENVCFG_MASK: u64 = 1 | (3 << ENVCFG_CBIE_SHIFT) | ENVCFG_CBCFE | ENVCFG_CBZE;
const MENVCFG_MASK: u64 = SENVCFG_MASK | MENVCFG_PBMTE;

/// An xenvcfg write: the writable fields, and CBIE's reserved value 2 keeps the old CBIE (WARL).
fn envcfg_write(old: u64, v: u64, mask: u64) -> u64 {
    let cbie = 3 << ENVCFG_CBIE_SHIFT;
    let new = v & mask;
    if (new & cbie) >> ENVCFG_CBIE_SHIFT == 2 {
        (new & !cbie) | (old & cbie)
    } else {
        new
    }
}

/// Whether an xenvcfg value is one a write can leave.
fn envcfg_legal(v: u64, mask: u64) -> bool {
    v & !mask == 0 && (v >> ENVCFG_CBIE_SHIFT) & 3 != 2
}

/// misa: RV64 with A, C, D, F, I, M, S, U.
pub const MISA: u64 = (2 << 62)
    | (1 << 0)
    | (1 << 2)
    | (1 << 3)
    | (1 << 5)
    | (1 << 8)
    | (1 << 12)
    | (1 << 18)
    | (1 << 20);

/// CSR numbers that ftvm implements.
#[allow(non_upper_case_globals)]
pub struct Csr;

#[allow(non_upper_case_globals)]
impl Csr {
    pub const fflags: u16 = 0x001;
    pub const frm: u16 = 0x002;
    pub const fcsr: u16 = 0x003;
    pub const cycle: u16 = 0xc00;
    pub const time: u16 = 0xc01;
    pub const instret: u16 = 0xc02;
    pub const sstatus: u16 = 0x100;
    pub const sie: u16 = 0x104;
    pub const stvec: u16 = 0x105;
    pub const scounteren: u16 = 0x106;
    pub const senvcfg: u16 = 0x10a;
    pub const sscratch: u16 = 0x140;
    pub const sepc: u16 = 0x141;
    pub const scause: u16 = 0x142;
    pub const stval: u16 = 0x143;
    pub const sip: u16 = 0x144;
    pub const satp: u16 = 0x180;
    pub const mvendorid: u16 = 0xf11;
    pub const marchid: u16 = 0xf12;
    pub const mimpid: u16 = 0xf13;
    pub const mhartid: u16 = 0xf14;
    pub const mconfigptr: u16 = 0xf15;
    pub const mstatus: u16 = 0x300;
    pub const misa: u16 = 0x301;
    pub const medeleg: u16 = 0x302;
    pub const mideleg: u16 = 0x303;
    pub const mie: u16 = 0x304;
    pub const mtvec: u16 = 0x305;
    pub const mcounteren: u16 = 0x306;
    pub const menvcfg: u16 = 0x30a;
    pub const mcountinhibit: u16 = 0x320;
    pub const mscratch: u16 = 0x340;
    pub const mepc: u16 = 0x341;
    pub const mcause: u16 = 0x342;
    pub const mtval: u16 = 0x343;
    pub const mip: u16 = 0x344;
    pub const mcycle: u16 = 0xb00;
    pub const minstret: u16 = 0xb02;
}

/// The CSR state of one hart (what is not derived from elsewhere).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsrFile {
    pub mstatus: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    /// Software-writable pending bits; the board's lines are in `Hart::ext_irq`.
    pub mip: u64,
    pub mtvec: u64,
    pub mcounteren: u64,
    pub menvcfg: u64,
    pub mscratch: u64,
    pub mepc: u64,
    pub mcause: u64,
    pub mtval: u64,
    pub stvec: u64,
    pub scounteren: u64,
    pub senvcfg: u64,
    pub sscratch: u64,
    pub sepc: u64,
    pub scause: u64,
    pub stval: u64,
    pub satp: u64,
    pub fflags: u64,
    pub frm: u64,
    pub mhartid: u64,
    pub pmpcfg: [u64; 2],
    pub pmpaddr: [u64; 16],
    /// mcycle/minstret are the step count plus this offset (they are writable).
    pub cycle_offset: u64,
}

impl CsrFile {
    pub fn new(hartid: u64) -> CsrFile {
        CsrFile {
            mstatus: (2 << 32) | (2 << 34),
            mhartid: hartid,
            ..Default::default()
        }
    }

    /// mstatus as software reads it (SD summarises FS).
    pub fn mstatus_read(&self) -> u64 {
        let mut v = self.mstatus & !MSTATUS_SD;
        if v & MSTATUS_FS == MSTATUS_FS {
            v |= MSTATUS_SD;
        }
        v
    }
}

/// The first field of `c` that holds a value no CSR write could produce (WARL fields outside
/// their legal values), if any: restoring a saved state must not bypass the write masks.
pub(crate) fn invalid_field(c: &CsrFile) -> Option<&'static str> {
    let fixed = CsrFile::new(0).mstatus & !MSTATUS_WRITABLE;
    let checks: [(bool, &'static str); 16] = [
        (c.mstatus & !MSTATUS_WRITABLE == fixed, "mstatus"),
        (
            (c.mstatus & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT != 2,
            "mstatus.MPP",
        ),
        (c.medeleg & !MEDELEG_MASK == 0, "medeleg"),
        (c.mideleg & !IRQ_S == 0, "mideleg"),
        (c.mie & !IRQ_ALL == 0, "mie"),
        (c.mip & !IRQ_S == 0, "mip"),
        (c.mtvec & 2 == 0 && c.stvec & 2 == 0, "xtvec"),
        (c.mepc & 1 == 0 && c.sepc & 1 == 0, "xepc"),
        (c.mcounteren >> 32 == 0, "mcounteren"),
        (c.scounteren >> 32 == 0, "scounteren"),
        (
            envcfg_legal(c.menvcfg, MENVCFG_MASK) && envcfg_legal(c.senvcfg, SENVCFG_MASK),
            "xenvcfg",
        ),
        (matches!(c.satp >> 60, 0 | 8 | 9), "satp mode"),
        ((c.satp & ((1 << 60) - 1)) >> 44 == 0, "satp"),
        (c.fflags & !0x1f == 0, "fflags"),
        (c.frm & !7 == 0, "frm"),
        (c.pmpaddr.iter().all(|a| a >> 54 == 0), "pmpaddr"),
    ];
    checks.iter().find(|(ok, _)| !ok).map(|&(_, what)| what)
}

impl Hart {
    fn counter_enabled(&self, csr: u16) -> bool {
        let bit = 1u64 << (csr & 0x1f);
        match self.prv {
            Priv::Machine => true,
            Priv::Supervisor => self.csr.mcounteren & bit != 0,
            Priv::User => self.csr.mcounteren & bit != 0 && self.csr.scounteren & bit != 0,
        }
    }

    fn fs_enabled(&self) -> bool {
        self.csr.mstatus & MSTATUS_FS != 0
    }

    /// Read a CSR; `Err` is an illegal-instruction trap.
    pub(crate) fn csr_read<B: Bus>(&mut self, bus: &mut B, n: u16) -> Result<u64, ()> {
        // The two top bits of the address give the lowest privilege that may access it.
        if (self.prv as u16) < ((n >> 8) & 3) {
            return Err(());
        }
        let c = &self.csr;
        Ok(match n {
            Csr::fflags if self.fs_enabled() => c.fflags,
            Csr::frm if self.fs_enabled() => c.frm,
            Csr::fcsr if self.fs_enabled() => (c.frm << 5) | c.fflags,
            Csr::cycle | Csr::instret if self.counter_enabled(n) => {
                self.count.wrapping_add(c.cycle_offset)
            }
            Csr::time if self.counter_enabled(n) => bus.time(self.count),
            0xc03..=0xc1f if self.counter_enabled(n) => 0,
            Csr::sstatus => c.mstatus_read() & SSTATUS_MASK,
            Csr::sie => c.mie & c.mideleg,
            Csr::stvec => c.stvec,
            Csr::scounteren => c.scounteren,
            Csr::senvcfg => c.senvcfg,
            Csr::sscratch => c.sscratch,
            Csr::sepc => c.sepc,
            Csr::scause => c.scause,
            Csr::stval => c.stval,
            Csr::sip => self.mip() & c.mideleg,
            Csr::satp => {
                if self.prv == Priv::Supervisor && c.mstatus & MSTATUS_TVM != 0 {
                    return Err(());
                }
                c.satp
            }
            Csr::mvendorid | Csr::marchid | Csr::mimpid | Csr::mconfigptr => 0,
            Csr::mhartid => c.mhartid,
            Csr::mstatus => c.mstatus_read(),
            Csr::misa => MISA,
            Csr::medeleg => c.medeleg,
            Csr::mideleg => c.mideleg,
            Csr::mie => c.mie,
            Csr::mtvec => c.mtvec,
            Csr::mcounteren => c.mcounteren,
            Csr::menvcfg => c.menvcfg,
            Csr::mcountinhibit => 0,
            Csr::mscratch => c.mscratch,
            Csr::mepc => c.mepc,
            Csr::mcause => c.mcause,
            Csr::mtval => c.mtval,
            Csr::mip => self.mip(),
            0x3a0 | 0x3a2 => c.pmpcfg[((n - 0x3a0) / 2) as usize],
            0x3a1..=0x3af => 0,
            0x3b0..=0x3bf => c.pmpaddr[(n - 0x3b0) as usize],
            0x3c0..=0x3ef => 0,
            Csr::mcycle | Csr::minstret => self.count.wrapping_add(c.cycle_offset),
            0xb03..=0xb1f | 0x323..=0x33f => 0,
            // Debug trigger registers: no triggers.
            0x7a0..=0x7a3 => 0,
            _ => return Err(()),
        })
    }

    /// Write a CSR; `Err` is an illegal-instruction trap.
    pub(crate) fn csr_write(&mut self, n: u16, v: u64) -> Result<(), ()> {
        if (self.prv as u16) < ((n >> 8) & 3) || (n >> 10) == 3 {
            return Err(());
        }
        let c = &mut self.csr;
        match n {
            Csr::fflags if c.mstatus & MSTATUS_FS != 0 => {
                c.fflags = v & 0x1f;
                c.mstatus |= MSTATUS_FS;
            }
            Csr::frm if c.mstatus & MSTATUS_FS != 0 => {
                c.frm = v & 7;
                c.mstatus |= MSTATUS_FS;
            }
            Csr::fcsr if c.mstatus & MSTATUS_FS != 0 => {
                c.fflags = v & 0x1f;
                c.frm = (v >> 5) & 7;
                c.mstatus |= MSTATUS_FS;
            }
            Csr::sstatus => {
                let m = SSTATUS_MASK & MSTATUS_WRITABLE;
                let new = (c.mstatus & !m) | (v & m);
                self.write_mstatus(new);
            }
            Csr::sie => c.mie = (c.mie & !c.mideleg) | (v & c.mideleg & IRQ_ALL),
            Csr::stvec => c.stvec = v & !2,
            Csr::scounteren => c.scounteren = v & 0xffff_ffff,
            Csr::senvcfg => c.senvcfg = envcfg_write(c.senvcfg, v, SENVCFG_MASK),
            Csr::sscratch => c.sscratch = v,
            Csr::sepc => c.sepc = v & !1,
            Csr::scause => c.scause = v,
            Csr::stval => c.stval = v,
            Csr::sip => {
                let m = irq::SSIP & c.mideleg;
                c.mip = (c.mip & !m) | (v & m);
            }
            Csr::satp => {
                if self.prv == Priv::Supervisor && c.mstatus & MSTATUS_TVM != 0 {
                    return Err(());
                }
                // Bare, Sv39 and Sv48; no ASID bits. Other modes leave satp unchanged (WARL).
                let mode = v >> 60;
                if matches!(mode, 0 | 8 | 9) {
                    c.satp = (mode << 60) | (v & ((1 << 44) - 1));
                    self.mmu.flush();
                }
            }
            Csr::mstatus => {
                let new = (c.mstatus & !MSTATUS_WRITABLE) | (v & MSTATUS_WRITABLE);
                self.write_mstatus(new);
            }
            Csr::misa => {}
            Csr::medeleg => c.medeleg = v & MEDELEG_MASK,
            Csr::mideleg => c.mideleg = v & IRQ_S,
            Csr::mie => c.mie = v & IRQ_ALL,
            Csr::mtvec => c.mtvec = v & !2,
            Csr::mcounteren => c.mcounteren = v & 0xffff_ffff,
            Csr::menvcfg => {
                let old = c.menvcfg;
                c.menvcfg = envcfg_write(old, v, MENVCFG_MASK);
                // PBMTE decides which page-table entries are valid: translations made under
                // the old setting go.
                if (old ^ c.menvcfg) & MENVCFG_PBMTE != 0 {
                    self.mmu.flush();
                }
            }
            Csr::mcountinhibit => {}
            Csr::mscratch => c.mscratch = v,
            Csr::mepc => c.mepc = v & !1,
            Csr::mcause => c.mcause = v,
            Csr::mtval => c.mtval = v,
            Csr::mip => {
                let m = irq::SSIP | irq::STIP | irq::SEIP;
                c.mip = (c.mip & !m) | (v & m);
            }
            0x3a0 | 0x3a2 => c.pmpcfg[((n - 0x3a0) / 2) as usize] = v,
            0x3a1..=0x3af => {}
            0x3b0..=0x3bf => c.pmpaddr[(n - 0x3b0) as usize] = v & ((1 << 54) - 1),
            0x3c0..=0x3ef => {}
            Csr::mcycle | Csr::minstret => {
                // The write takes effect after this instruction retires.
                c.cycle_offset = v.wrapping_sub(self.count.wrapping_add(1));
            }
            0xb03..=0xb1f | 0x323..=0x33f => {}
            0x7a0..=0x7a3 => {}
            _ => return Err(()),
        }
        Ok(())
    }

    fn write_mstatus(&mut self, v: u64) {
        let old = self.csr.mstatus;
        let mut v = v;
        // MPP cannot hold the reserved value 2.
        if (v & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT == 2 {
            v = (v & !MSTATUS_MPP) | (old & MSTATUS_MPP);
        }
        self.csr.mstatus = v;
        let tlb_bits = MSTATUS_MPRV | MSTATUS_SUM | MSTATUS_MXR | MSTATUS_MPP;
        if (old ^ v) & tlb_bits != 0 {
            // These bits govern loads and stores only: the translations of the new setting
            // apply from the next access on (a running block reads the tag at each one).
            self.mmu.dtag = self.data_tag();
        }
    }

    /// Execute a Zicsr instruction.
    #[inline(never)]
    pub(crate) fn exec_csr<B: Bus>(
        &mut self,
        bus: &mut B,
        insn: u32,
        raw: u64,
    ) -> Result<(), Trap> {
        let illegal = Trap::new(cause::ILLEGAL_INSN, raw);
        let rd = ((insn >> 7) & 31) as usize;
        let rs1 = ((insn >> 15) & 31) as usize;
        let funct3 = (insn >> 12) & 7;
        let n = (insn >> 20) as u16;
        let src = if funct3 & 4 != 0 {
            rs1 as u64
        } else {
            self.x[rs1]
        };
        // CSRRW with rd=x0 does not read; CSRRS/C with rs1=x0 do not write.
        let writes = funct3 & 3 == 1 || rs1 != 0;
        if writes && (n >> 10) == 3 {
            return Err(illegal);
        }
        let old = if funct3 & 3 == 1 && rd == 0 {
            // Check access without side effects of a read.
            if (self.prv as u16) < ((n >> 8) & 3) {
                return Err(illegal);
            }
            0
        } else {
            self.csr_read(bus, n).map_err(|_| illegal)?
        };
        if writes {
            let new = match funct3 & 3 {
                1 => src,
                2 => old | src,
                _ => old & !src,
            };
            self.csr_write(n, new).map_err(|_| illegal)?;
            // The write may have unmasked an interrupt.
            self.brk = true;
        }
        if rd != 0 {
            self.x[rd] = old;
        }
        Ok(())
    }
}
