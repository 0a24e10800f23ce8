//! The device tree that describes the board to the guest, generated at boot.

use vm_fdt::{FdtWriter, FdtWriterResult};

use crate::board::{
    CLINT_BASE, PLIC_BASE, RTC_BASE, RTC_IRQ, TEST_BASE, TIMEBASE_HZ, UART_BASE, UART_IRQ,
};
use crate::plic::NSRC;
use crate::virtio;
use crate::RAM_BASE;

const PH_CPU0_INTC: u32 = 1;
const PH_PLIC: u32 = 2;
const PH_TEST: u32 = 3;

/// The phandle of hart `h`'s interrupt controller (hart 0's is the one-hart tree's).
fn intc(h: usize) -> u32 {
    if h == 0 {
        PH_CPU0_INTC
    } else {
        0x10 + h as u32
    }
}

/// Where the initial RAM disk sits in guest physical memory.
pub struct InitrdRange {
    pub start: u64,
    pub end: u64,
}

/// The hart's ISA as a `riscv,isa` string (multi-letter extensions in canonical order).
const ISA: &str =
    "rv64imafdc_zicbom_zicboz_zicntr_zicond_zicsr_zifencei_zihintpause_zba_zbb_zbs_svpbmt";
/// The same, as the `riscv,isa-extensions` list.
const ISA_EXTENSIONS: [&str; 17] = [
    "i",
    "m",
    "a",
    "f",
    "d",
    "c",
    "zicbom",
    "zicboz",
    "zicntr",
    "zicond",
    "zicsr",
    "zifencei",
    "zihintpause",
    "zba",
    "zbb",
    "zbs",
    "svpbmt",
];

pub fn build(
    ram_size: u64,
    harts: usize,
    cmdline: &str,
    initrd: Option<InitrdRange>,
    virtio_slots: usize,
) -> FdtWriterResult<Vec<u8>> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "ftvm,virt")?;
    f.property_string("model", "ftvm deterministic RISC-V machine")?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", cmdline)?;
    f.property_string("stdout-path", &format!("/soc/serial@{UART_BASE:x}"))?;
    if let Some(r) = initrd {
        f.property_u64("linux,initrd-start", r.start)?;
        f.property_u64("linux,initrd-end", r.end)?;
    }
    f.end_node(chosen)?;

    let mem = f.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[RAM_BASE, ram_size])?;
    f.end_node(mem)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    f.property_u32("timebase-frequency", TIMEBASE_HZ as u32)?;
    for h in 0..harts {
        let cpu = f.begin_node(&format!("cpu@{h}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_u32("reg", h as u32)?;
        f.property_string("status", "okay")?;
        f.property_string("compatible", "riscv")?;
        // The ISA both ways: the string older kernels read, and the list of newer bindings.
        f.property_string("riscv,isa", ISA)?;
        f.property_string("riscv,isa-base", "rv64i")?;
        f.property_string_list(
            "riscv,isa-extensions",
            ISA_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        )?;
        f.property_string("mmu-type", "riscv,sv48")?;
        let block = ftvm_cpu::CBO_BLOCK as u32;
        f.property_u32("riscv,cbom-block-size", block)?;
        f.property_u32("riscv,cboz-block-size", block)?;
        let ic = f.begin_node("interrupt-controller")?;
        f.property_u32("#interrupt-cells", 1)?;
        f.property_null("interrupt-controller")?;
        f.property_string("compatible", "riscv,cpu-intc")?;
        f.property_phandle(intc(h))?;
        f.end_node(ic)?;
        f.end_node(cpu)?;
    }
    f.end_node(cpus)?;

    let soc = f.begin_node("soc")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "simple-bus")?;
    f.property_null("ranges")?;

    let clint = f.begin_node(&format!("clint@{CLINT_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,clint0".into(), "riscv,clint0".into()],
    )?;
    f.property_array_u64("reg", &[CLINT_BASE, 0x10000])?;
    // Per hart: machine software (3) and machine timer (7) interrupts.
    let clint_irqs: Vec<u32> = (0..harts).flat_map(|h| [intc(h), 3, intc(h), 7]).collect();
    f.property_array_u32("interrupts-extended", &clint_irqs)?;
    f.end_node(clint)?;

    let plic = f.begin_node(&format!("plic@{PLIC_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    f.property_array_u64("reg", &[PLIC_BASE, 0x60_0000])?;
    f.property_u32("#address-cells", 0)?;
    f.property_u32("#interrupt-cells", 1)?;
    f.property_null("interrupt-controller")?;
    f.property_u32("riscv,ndev", NSRC as u32 - 1)?;
    // Context 2h is hart h's M-mode external interrupt (11), 2h + 1 its S-mode one (9).
    let plic_irqs: Vec<u32> = (0..harts).flat_map(|h| [intc(h), 11, intc(h), 9]).collect();
    f.property_array_u32("interrupts-extended", &plic_irqs)?;
    f.property_phandle(PH_PLIC)?;
    f.end_node(plic)?;

    let uart = f.begin_node(&format!("serial@{UART_BASE:x}"))?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &[UART_BASE, 0x100])?;
    f.property_u32("clock-frequency", 3_686_400)?;
    f.property_u32("interrupts", UART_IRQ as u32)?;
    f.property_u32("interrupt-parent", PH_PLIC)?;
    f.end_node(uart)?;

    let rtc = f.begin_node(&format!("rtc@{RTC_BASE:x}"))?;
    f.property_string("compatible", "google,goldfish-rtc")?;
    f.property_array_u64("reg", &[RTC_BASE, 0x1000])?;
    f.property_u32("interrupts", RTC_IRQ as u32)?;
    f.property_u32("interrupt-parent", PH_PLIC)?;
    f.end_node(rtc)?;

    for slot in 0..virtio_slots {
        let base = virtio::MMIO_BASE + slot as u64 * virtio::MMIO_SIZE;
        let n = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &[base, virtio::MMIO_SIZE])?;
        f.property_u32("interrupts", (virtio::FIRST_IRQ + slot) as u32)?;
        f.property_u32("interrupt-parent", PH_PLIC)?;
        f.end_node(n)?;
    }

    let test = f.begin_node(&format!("test@{TEST_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec![
            "sifive,test1".into(),
            "sifive,test0".into(),
            "syscon".into(),
        ],
    )?;
    f.property_array_u64("reg", &[TEST_BASE, 0x1000])?;
    f.property_phandle(PH_TEST)?;
    f.end_node(test)?;

    let poweroff = f.begin_node("poweroff")?;
    f.property_string("compatible", "syscon-poweroff")?;
    f.property_u32("regmap", PH_TEST)?;
    f.property_u32("offset", 0)?;
    f.property_u32("value", 0x5555)?;
    f.end_node(poweroff)?;

    f.end_node(soc)?;
    f.end_node(root)?;
    f.finish()
}
