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

/// The RAM offsets of `len` bytes at guest physical address `paddr`, if they lie inside RAM.
fn ram_range(ram: &[u8], paddr: u64, len: u64) -> Option<std::ops::Range<usize>> {
    let off = paddr.checked_sub(RAM_BASE)?;
    let end = off.checked_add(len)?;
    if end > ram.len() as u64 {
        return None;
    }
    Some(off as usize..end as usize)
}

/// Copy `data` to guest physical address `paddr`, checking it lies inside RAM.
fn copy_in(ram: &mut [u8], paddr: u64, data: &[u8]) -> Option<()> {
    let r = ram_range(ram, paddr, data.len() as u64)?;
    ram[r].copy_from_slice(data);
    Some(())
}

/// Load a RISC-V Linux `Image` (the format of arch/riscv/boot/Image).
pub fn load_linux(
    ram: &mut [u8],
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    virtio_slots: usize,
    harts: usize,
) -> Result<LinuxBoot, MachineError> {
    if kernel.len() < 64 || &kernel[56..60] != IMAGE_MAGIC2 {
        return Err(MachineError::Kernel(
            "not a RISC-V Linux Image (no \"RSC\\x05\" magic at offset 56); \
             for a bare-metal ELF use --elf"
                .into(),
        ));
    }
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&kernel[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let text_offset = field(8);
    let image_size = field(16);
    let ram_size = ram.len() as u64;
    // The kernel occupies the larger of the file and the size its header declares (its BSS);
    // that and the device tree's space must fit in RAM, every sum checked.
    let footprint = image_size.max(kernel.len() as u64);
    let kernel_end = text_offset
        .checked_add(footprint)
        .filter(|&e| {
            e.checked_add(DTB_SPACE)
                .is_some_and(|needed| needed <= ram_size)
        })
        .ok_or_else(|| {
            MachineError::Kernel(format!(
                "the kernel needs {} MiB at offset {:#x}, more than --mem allows",
                footprint >> 20,
                text_offset
            ))
        })?;
    if !text_offset.is_multiple_of(4) {
        return Err(MachineError::Kernel(format!(
            "text_offset {text_offset:#x} is not 4-byte aligned"
        )));
    }
    // In range: text_offset < kernel_end <= ram_size - DTB_SPACE.
    let entry = RAM_BASE + text_offset;
    copy_in(ram, entry, kernel)
        .ok_or_else(|| MachineError::Kernel("kernel does not fit in RAM".into()))?;

    // The device tree goes at the top of RAM, the initrd just below it.
    let dtb_addr = RAM_BASE + ram_size - DTB_SPACE;
    let initrd_range = match initrd {
        Some(data) => {
            let start = dtb_addr
                .checked_sub(data.len() as u64)
                .map(|s| align_down(s, 4096))
                .filter(|&s| s >= RAM_BASE + kernel_end);
            let Some(start) = start else {
                return Err(MachineError::Initrd(format!(
                    "{} MiB of initrd and the kernel need more RAM than --mem gives",
                    data.len() >> 20
                )));
            };
            copy_in(ram, start, data).ok_or_else(|| MachineError::Initrd("out of RAM".into()))?;
            Some(fdt::InitrdRange {
                start,
                end: start + data.len() as u64,
            })
        }
        None => None,
    };
    let dtb = fdt::build(ram_size, harts, cmdline, initrd_range, virtio_slots)
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
        // Where it goes is checked before anything is copied or zeroed, so header values
        // never size an allocation.
        let dst = ram_range(ram, ph.p_paddr, ph.p_memsz).ok_or_else(|| bad("lies outside RAM"))?;
        let data = usize::try_from(ph.p_offset)
            .ok()
            .zip(usize::try_from(ph.p_filesz).ok())
            .and_then(|(o, n)| file.get(o..o.checked_add(n)?))
            .ok_or_else(|| bad("extends past the end of the file"))?;
        let (init, zeros) = ram[dst].split_at_mut(data.len());
        init.copy_from_slice(data);
        zeros.fill(0);
        loaded += 1;
    }
    if loaded == 0 {
        return Err(MachineError::Elf("no loadable segment".into()));
    }
    if elf.entry & 1 != 0 {
        return Err(MachineError::Elf(format!(
            "entry point {:#x} is not 2-byte aligned",
            elf.entry
        )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc_probe::largest_allocation;

    const RAM: usize = 16 << 20;

    /// A 64-bit little-endian RISC-V ELF with the given PT_LOAD segments
    /// (offset, paddr, filesz, memsz) and 64 bytes of contents after the headers.
    fn elf(segments: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        let mut f = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let u16s = |f: &mut Vec<u8>, v: u16| f.extend_from_slice(&v.to_le_bytes());
        u16s(&mut f, 2); // ET_EXEC
        u16s(&mut f, EM_RISCV);
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&RAM_BASE.to_le_bytes()); // entry
        f.extend_from_slice(&64u64.to_le_bytes()); // phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // shoff
        f.extend_from_slice(&0u32.to_le_bytes()); // flags
        for v in [64, 56, segments.len() as u16, 64, 0, 0] {
            u16s(&mut f, v);
        }
        for &(offset, paddr, filesz, memsz) in segments {
            f.extend_from_slice(&PT_LOAD.to_le_bytes());
            f.extend_from_slice(&7u32.to_le_bytes());
            for v in [offset, paddr, paddr, filesz, memsz, 0x1000] {
                f.extend_from_slice(&v.to_le_bytes());
            }
        }
        f.extend_from_slice(&[0xab; 64]);
        f
    }

    fn load(file: &[u8]) -> Result<Program, MachineError> {
        let mut ram = vec![0u8; RAM];
        load_elf(&mut ram, file)
    }

    #[test]
    fn elf_segments_load_and_zero_their_bss() {
        let f = elf(&[(120, RAM_BASE + 0x1000, 8, 32)]);
        let mut ram = vec![0xffu8; RAM];
        let p = load_elf(&mut ram, &f).unwrap();
        assert_eq!(p.entry, RAM_BASE);
        assert_eq!(ram[0x1000..0x1008], [0xab; 8]);
        assert_eq!(ram[0x1008..0x1020], [0; 24]);
        assert_eq!(ram[0x1020], 0xff);
    }

    #[test]
    fn crafted_elf_headers_are_refused_without_large_allocations() {
        let top = RAM_BASE + RAM as u64;
        for (what, seg) in [
            ("paddr + memsz overflows", (120, u64::MAX - 8, 8, 32)),
            ("filesz > memsz", (120, RAM_BASE, 32, 8)),
            ("offset past the file", (1 << 40, RAM_BASE, 8, 8)),
            ("offset + filesz overflows", (u64::MAX - 4, RAM_BASE, 8, 8)),
            ("filesz past the file", (120, RAM_BASE, 1 << 20, 1 << 20)),
            ("huge memsz", (120, RAM_BASE, 8, 1 << 40)),
            ("memsz u64::MAX", (120, RAM_BASE, 8, u64::MAX)),
            ("below RAM", (120, 0x1000, 8, 8)),
            ("ends past RAM", (120, top - 4, 8, 8)),
        ] {
            let f = elf(&[seg]);
            let mut ram = vec![0u8; RAM];
            let (r, largest) = largest_allocation(|| load_elf(&mut ram, &f));
            assert!(matches!(r, Err(MachineError::Elf(_))), "{what}");
            assert!(largest < 1 << 20, "{what}: allocated {largest}");
        }
        assert!(matches!(load(&elf(&[])), Err(MachineError::Elf(_))));
        let mut odd = elf(&[(120, RAM_BASE, 8, 8)]);
        odd[24] |= 1; // e_entry
        assert!(matches!(load(&odd), Err(MachineError::Elf(_))), "odd entry");
        assert!(matches!(load(b"\x7fELF"), Err(MachineError::Elf(_))));
    }

    /// A RISC-V Linux Image header with the given text_offset and image_size.
    fn image(text_offset: u64, image_size: u64) -> Vec<u8> {
        let mut k = vec![0u8; 4096];
        k[8..16].copy_from_slice(&text_offset.to_le_bytes());
        k[16..24].copy_from_slice(&image_size.to_le_bytes());
        k[56..60].copy_from_slice(IMAGE_MAGIC2);
        k
    }

    fn linux(kernel: &[u8], initrd: Option<&[u8]>) -> Result<LinuxBoot, MachineError> {
        let mut ram = vec![0u8; RAM];
        load_linux(&mut ram, kernel, initrd, "console=ttyS0", 1, 1)
    }

    #[test]
    fn crafted_image_headers_are_refused() {
        let ok = linux(&image(0x20_0000, 0x10_0000), Some(&[1; 4096])).unwrap();
        assert_eq!(ok.entry, RAM_BASE + 0x20_0000);
        assert_eq!(ok.dtb, RAM_BASE + RAM as u64 - DTB_SPACE);
        for (what, text_offset, image_size) in [
            ("text_offset huge", u64::MAX - 8191, 0),
            (
                "text_offset + size + dtb wraps",
                u64::MAX - DTB_SPACE - 4095,
                4096,
            ),
            ("image_size huge", 0x20_0000, u64::MAX),
            ("image_size past RAM", 0x20_0000, RAM as u64),
            ("text_offset past RAM", RAM as u64, 4096),
            ("misaligned text_offset", 0x20_0002, 0),
        ] {
            let r = linux(&image(text_offset, image_size), None);
            assert!(matches!(r, Err(MachineError::Kernel(_))), "{what}");
        }
        assert!(matches!(
            linux(&[0; 63], None),
            Err(MachineError::Kernel(_))
        ));
        // An initrd larger than RAM, or one that would overlap the kernel.
        let big = vec![0u8; RAM + 4096];
        let r = linux(&image(0x20_0000, 0x10_0000), Some(&big));
        assert!(matches!(r, Err(MachineError::Initrd(_))));
        let r = linux(
            &image(0x20_0000, RAM as u64 - 4 * DTB_SPACE),
            Some(&[1; 3 << 20]),
        );
        assert!(matches!(r, Err(MachineError::Initrd(_))));
    }
}
