//! The guest console on the host terminal: raw mode on a TTY with Ctrl-A x to quit (as in
//! QEMU), or plain bytes from a pipe. A thread reads stdin so the machine never blocks on it.

use std::io::{Read, Write};
use std::sync::mpsc::Sender;
use std::sync::Mutex;

use crate::{EventSink, HostEvent};

/// The terminal settings to put back on exit, when raw mode is on.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Put the terminal back as it was (idempotent).
pub fn restore_terminal() {
    if let Some(t) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: tcsetattr reads a valid termios that tcgetattr filled in for fd 0.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
    }
}

fn enter_raw_mode() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } != 1 {
        return false;
    }
    // SAFETY: termios is plain old data; tcgetattr fills it in for fd 0, which is a TTY.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above, `t` is a valid, writable termios.
    if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
        return false;
    }
    *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    let mut raw = t;
    // SAFETY: cfmakeraw and tcsetattr operate on a valid termios for fd 0.
    unsafe {
        libc::cfmakeraw(&mut raw);
        libc::tcsetattr(0, libc::TCSANOW, &raw);
    }
    true
}

/// The console on the host terminal: raw mode on a TTY, restored on drop. Output goes through
/// a writer thread, so a slow reader of stdout never stalls the guest.
pub struct Console {
    out: Option<Sender<Vec<u8>>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// Where a detached console's output goes.
pub type Captured = std::sync::Arc<Mutex<Vec<u8>>>;

impl Console {
    /// A console with no terminal: no input, and the output appended to `buf`.
    pub fn capture(buf: Captured) -> std::io::Result<Console> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = std::thread::Builder::new()
            .name("console-capture".into())
            .spawn(move || {
                for bytes in rx {
                    buf.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&bytes);
                }
            })?;
        Ok(Console {
            out: Some(tx),
            writer: Some(writer),
        })
    }

    /// Start reading stdin on a thread of its own; its bytes arrive as `HostEvent::Console`.
    pub fn start<E: From<HostEvent> + Send + 'static>(
        events: impl EventSink<E>,
    ) -> std::io::Result<Console> {
        let tty = enter_raw_mode();
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let mut stdin = std::io::stdin().lock();
                let mut buf = [0u8; 4096];
                let mut ctrl_a = false;
                loop {
                    let n = match stdin.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = events.deliver(HostEvent::ConsoleEof.into());
                            return;
                        }
                        Ok(n) => n,
                    };
                    let mut data = Vec::with_capacity(n);
                    for &b in &buf[..n] {
                        if tty && ctrl_a {
                            ctrl_a = false;
                            match b {
                                b'x' | b'X' => {
                                    let _ = events.deliver(HostEvent::Quit.into());
                                    return;
                                }
                                0x01 => data.push(0x01),
                                _ => {}
                            }
                        } else if tty && b == 0x01 {
                            ctrl_a = true;
                        } else {
                            data.push(b);
                        }
                    }
                    if !events.deliver(HostEvent::Console(data).into()) {
                        return;
                    }
                }
            })?;
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                let mut out = std::io::stdout();
                for bytes in rx {
                    // A closed stdout (the reader went away) must not stop the machine.
                    let _ = out.write_all(&bytes).and_then(|_| out.flush());
                }
            })?;
        Ok(Console {
            out: Some(tx),
            writer: Some(writer),
        })
    }

    pub fn write_output(&mut self, bytes: &[u8]) {
        if let Some(tx) = &self.out {
            let _ = tx.send(bytes.to_vec());
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // Let the writer finish what the guest wrote, then put the terminal back.
        self.out.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        restore_terminal();
    }
}
