//! An NS16550A UART: enough of the 16550 for Linux's 8250 driver and earlycon.
//! Transmission is instantaneous; received bytes wait in a FIFO.

use std::collections::VecDeque;

use crate::snapshot::{Reader, SnapshotError, Writer};

const IER_RDI: u8 = 1;
const IER_THRI: u8 = 2;
const LSR_DR: u8 = 1;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;
/// Receive FIFO depth: a received byte is refused while the FIFO is full.
pub const RX_FIFO: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uart {
    rx: VecDeque<u8>,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fcr: u8,
    dll: u8,
    dlm: u8,
    thr_ipending: bool,
}

impl Uart {
    /// Whether the guest's driver listens for input and has room for a byte.
    pub fn rx_ready(&self) -> bool {
        self.ier & IER_RDI != 0 && self.rx.len() < RX_FIFO
    }

    /// Receive a byte from the outside world.
    pub fn push_rx(&mut self, b: u8) {
        if self.rx.len() < RX_FIFO {
            self.rx.push_back(b);
        }
    }

    fn iir(&self) -> u8 {
        let fifo = if self.fcr & 1 != 0 { 0xc0 } else { 0 };
        let id = if self.ier & IER_RDI != 0 && !self.rx.is_empty() {
            0x04
        } else if self.ier & IER_THRI != 0 && self.thr_ipending {
            0x02
        } else {
            0x01
        };
        fifo | id
    }

    /// The interrupt line.
    pub fn irq(&self) -> bool {
        self.iir() & 1 == 0
    }

    pub fn read(&mut self, off: u64) -> u8 {
        match off {
            0 if self.lcr & LCR_DLAB != 0 => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if self.lcr & LCR_DLAB != 0 => self.dlm,
            1 => self.ier,
            2 => {
                let v = self.iir();
                if v & 0x0f == 0x02 {
                    self.thr_ipending = false;
                }
                v
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_THRE | LSR_TEMT | if self.rx.is_empty() { 0 } else { LSR_DR },
            // Modem status: CTS, DSR and DCD asserted (or the loopback of MCR).
            6 if self.mcr & MCR_LOOP != 0 => (self.mcr & 0x0f) << 4,
            6 => 0xb0,
            7 => self.scr,
            _ => 0,
        }
    }

    /// A register write; a byte for the outside world is returned.
    pub fn write(&mut self, off: u64, v: u8) -> Option<u8> {
        match off {
            0 if self.lcr & LCR_DLAB != 0 => self.dll = v,
            0 => {
                self.thr_ipending = true;
                if self.mcr & MCR_LOOP != 0 {
                    self.push_rx(v);
                    return None;
                }
                return Some(v);
            }
            1 if self.lcr & LCR_DLAB != 0 => self.dlm = v,
            1 => {
                let enabling_thri = v & IER_THRI != 0 && self.ier & IER_THRI == 0;
                self.ier = v & 0x0f;
                if enabling_thri {
                    // The holding register is always empty: announce it.
                    self.thr_ipending = true;
                }
            }
            2 => {
                if v & 2 != 0 {
                    self.rx.clear();
                }
                self.fcr = v & 0xc9;
            }
            3 => self.lcr = v,
            4 => self.mcr = v & 0x1f,
            7 => self.scr = v,
            _ => {}
        }
        None
    }

    pub fn save(&self, w: &mut Writer) {
        w.bytes(&self.rx.iter().copied().collect::<Vec<_>>());
        for b in [
            self.ier, self.lcr, self.mcr, self.scr, self.fcr, self.dll, self.dlm,
        ] {
            w.u8(b);
        }
        w.u8(self.thr_ipending as u8);
    }

    pub fn load(r: &mut Reader) -> Result<Uart, SnapshotError> {
        let rx = r.bytes_max(RX_FIFO, "UART receive FIFO too long")?;
        Ok(Uart {
            rx: rx.into_iter().collect(),
            ier: r.u8()?,
            lcr: r.u8()?,
            mcr: r.u8()?,
            scr: r.u8()?,
            fcr: r.u8()?,
            dll: r.u8()?,
            dlm: r.u8()?,
            thr_ipending: r.u8()? != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thr_interrupt_follows_ier_and_iir_reads() {
        let mut u = Uart::default();
        assert!(!u.irq());
        u.write(1, IER_THRI);
        assert!(u.irq(), "enabling THRI with an empty THR raises the line");
        assert_eq!(u.read(2) & 0x0f, 0x02);
        assert!(!u.irq(), "reading IIR acknowledges THRE");
        assert_eq!(u.write(0, b'x'), Some(b'x'));
        assert!(u.irq());
    }

    #[test]
    fn receive_needs_a_listening_driver() {
        let mut u = Uart::default();
        assert!(!u.rx_ready());
        u.write(1, IER_RDI);
        assert!(u.rx_ready());
        u.push_rx(b'a');
        assert!(u.irq());
        assert_eq!(u.read(5) & LSR_DR, LSR_DR);
        assert_eq!(u.read(0), b'a');
        assert!(!u.irq());
    }
}
