//! The guest console on the host terminal: raw mode on a TTY with Ctrl-A x to quit (as in
//! QEMU), or plain bytes from a pipe. A thread reads stdin so the machine never blocks on it.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use ftvm_machine::Machine;

enum Msg {
    Data(Vec<u8>),
    Eof,
    Quit,
}

pub enum Input {
    Continue,
    Quit,
}

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

pub struct Console {
    rx: Receiver<Msg>,
    pending: VecDeque<u8>,
    open: bool,
    quit: bool,
    out: std::io::Stdout,
}

impl Console {
    pub fn start() -> Result<Console> {
        let tty = enter_raw_mode();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let mut stdin = std::io::stdin().lock();
                let mut buf = [0u8; 4096];
                let mut ctrl_a = false;
                loop {
                    let n = match stdin.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = tx.send(Msg::Eof);
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
                                    let _ = tx.send(Msg::Quit);
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
                    if tx.send(Msg::Data(data)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Console {
            rx,
            pending: VecDeque::new(),
            open: true,
            quit: false,
            out: std::io::stdout(),
        })
    }

    /// Whether more input may still come.
    pub fn input_open(&self) -> bool {
        self.open || !self.pending.is_empty()
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::Data(d) => self.pending.extend(d),
            Msg::Eof => self.open = false,
            Msg::Quit => self.quit = true,
        }
    }

    /// Wait up to `timeout` for input; returns how long it waited.
    pub fn wait_input(&mut self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        if !self.pending.is_empty() || self.quit {
            return Duration::ZERO;
        }
        match self.rx.recv_timeout(timeout) {
            Ok(m) => self.take(m),
            Err(RecvTimeoutError::Disconnected) => {
                self.open = false;
                std::thread::sleep(timeout);
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        t0.elapsed()
    }

    /// Hand the guest as much pending input as its UART takes now.
    pub fn feed(&mut self, m: &mut Machine) -> Input {
        while let Ok(msg) = self.rx.try_recv() {
            self.take(msg);
        }
        if self.quit {
            return Input::Quit;
        }
        while let Some(&b) = self.pending.front() {
            if !m.console_input(b) {
                break;
            }
            self.pending.pop_front();
        }
        Input::Continue
    }

    pub fn write_output(&mut self, bytes: &[u8]) -> Result<()> {
        if !bytes.is_empty() {
            // A closed stdout (the reader went away) must not stop the machine.
            let _ = self.out.write_all(bytes).and_then(|_| self.out.flush());
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        restore_terminal();
    }
}
