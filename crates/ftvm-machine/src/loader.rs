//! Loading a Linux kernel Image (with initrd and device tree) or a bare-metal ELF into RAM.

use goblin::elf::{header::EM_RISCV, program_header::PT_LOAD, Elf};

use crate::{fdt, MachineError, RAM_BASE};

/// Where a loaded kernel starts.
pub struct LinuxBoot {
    pub entry: u64,
    pub dtb: u64,
}

/// A loaded bare-metal program.
pub struct Program {
    pub entry: u64,
    pub tohost: Option<u64>,
}

const IMAGE_MAGIC2: &[u8; 4] = b"RSC\x05";
const DTB_SPACE: u64 = 1 << 20;

fn align_down(v: u64, a: u64) -> u64 {
    v & !(a - 1)
}

/// Copy `data` to guest physical address `paddr`, checking it lies inside RAM.
fn copy_in(ram: &mut [u8], paddr: u64, data: &[u8]) -> Option<()> {
    let off = paddr.checked_sub(RAM_BASE)? as usize;
    ram.get_mut(off..off.checked_add(data.len())?)?
        .copy_from_slice(data);
    Some(())
}

/// Load a RISC-V Linux `Image` (the format of arch/riscv/boot/Image).
pub fn load_linux(
    ram: &mut [u8],
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    virtio_slots: usize,
) -> Result<LinuxBoot, MachineError> {
    if kernel.len() < 64 || &kernel[56..60] != IMAGE_MAGIC2 {
        return Err(MachineError::Kernel(
            "not a RISC-V Linux Image (no \"RSC\\x05\" magic at offset 56); \
             for a bare-metal ELF use --elf"
                .into(),
        ));
    }
    let text_offset = u64::from_le_bytes(kernel[8..16].try_into().unwrap());
    let image_size = u64::from_le_bytes(kernel[16..24].try_into().unwrap());
    let ram_size = ram.len() as u64;
    let footprint = image_size.max(kernel.len() as u64);
    let kernel_end = text_offset
        .checked_add(footprint)
        .filter(|&e| e + DTB_SPACE <= ram_size)
        .ok_or_else(|| {
            MachineError::Kernel(format!(
                "the kernel needs {} MiB at offset {:#x}, more than --mem allows",
                footprint >> 20,
                text_offset
            ))
        })?;
    let entry = RAM_BASE + text_offset;
    copy_in(ram, entry, kernel)
        .ok_or_else(|| MachineError::Kernel("kernel does not fit in RAM".into()))?;

    // The device tree goes at the top of RAM, the initrd just below it.
    let dtb_addr = RAM_BASE + ram_size - DTB_SPACE;
    let initrd_range = match initrd {
        Some(data) => {
            let start = align_down(dtb_addr - data.len() as u64, 4096);
            if start < RAM_BASE + kernel_end {
                return Err(MachineError::Initrd(format!(
                    "{} MiB of initrd and the kernel need more RAM than --mem gives",
                    data.len() >> 20
                )));
            }
            copy_in(ram, start, data).ok_or_else(|| MachineError::Initrd("out of RAM".into()))?;
            Some(fdt::InitrdRange {
                start,
                end: start + data.len() as u64,
            })
        }
        None => None,
    };
    let dtb = fdt::build(ram_size, cmdline, initrd_range, virtio_slots)
        .map_err(|e| MachineError::Fdt(e.to_string()))?;
    if dtb.len() as u64 > DTB_SPACE {
        return Err(MachineError::Fdt("device tree too large".into()));
    }
    copy_in(ram, dtb_addr, &dtb).ok_or_else(|| MachineError::Fdt("out of RAM".into()))?;
    Ok(LinuxBoot {
        entry,
        dtb: dtb_addr,
    })
}

/// Load the PT_LOAD segments of a 64-bit RISC-V ELF at their physical addresses.
pub fn load_elf(ram: &mut [u8], file: &[u8]) -> Result<Program, MachineError> {
    let elf = Elf::parse(file).map_err(|e| MachineError::Elf(e.to_string()))?;
    if !elf.is_64 || elf.header.e_machine != EM_RISCV {
        return Err(MachineError::Elf("not a 64-bit RISC-V ELF".into()));
    }
    let mut loaded = 0;
    for ph in elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD) {
        let bad = |what: &str| {
            MachineError::Elf(format!(
                "segment at {:#x} ({} bytes): {what}",
                ph.p_paddr, ph.p_memsz
            ))
        };
        if ph.p_filesz > ph.p_memsz {
            return Err(bad("file size exceeds memory size"));
        }
        let data = usize::try_from(ph.p_offset)
            .ok()
            .and_then(|o| file.get(o..o.checked_add(ph.p_filesz as usize)?))
            .ok_or_else(|| bad("extends past the end of the file"))?;
        let zeros = vec![0u8; (ph.p_memsz - ph.p_filesz) as usize];
        copy_in(ram, ph.p_paddr, data)
            .and_then(|_| copy_in(ram, ph.p_paddr + ph.p_filesz, &zeros))
            .ok_or_else(|| bad("lies outside RAM"))?;
        loaded += 1;
    }
    if loaded == 0 {
        return Err(MachineError::Elf("no loadable segment".into()));
    }
    let tohost = elf
        .syms
        .iter()
        .find(|s| elf.strtab.get_at(s.st_name) == Some("tohost"))
        .map(|s| s.st_value);
    Ok(Program {
        entry: elf.entry,
        tohost,
    })
}
