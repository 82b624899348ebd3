//! Where rounds run: inline, or on a thread at the lowest scheduling priority so that a
//! round never delays a frame's inference (the frame path only hands over a job and, later,
//! picks up its outcome).

use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use super::trainer::{Job, Outcome, Trainer};
use crate::EdgeError;

#[derive(Debug)]
pub struct Worker {
    mode: Mode,
    busy: bool,
}

#[derive(Debug)]
enum Mode {
    Inline {
        trainer: Box<Trainer>,
        done: Option<Result<Outcome, EdgeError>>,
    },
    Thread {
        jobs: Option<Sender<Job>>,
        outcomes: Receiver<Result<Outcome, EdgeError>>,
        handle: Option<JoinHandle<()>>,
    },
}

impl Worker {
    pub fn new(trainer: Trainer, background: bool) -> Result<Self, EdgeError> {
        let mode = if background {
            let (jobs, job_rx) = channel::<Job>();
            let (out_tx, outcomes) = channel();
            let mut trainer = trainer;
            let handle = std::thread::Builder::new()
                .name("adapt".into())
                .spawn(move || {
                    lower_priority();
                    for job in job_rx {
                        if out_tx.send(trainer.round(job)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| EdgeError::Io {
                    path: "adaptation thread".into(),
                    source: e,
                })?;
            Mode::Thread {
                jobs: Some(jobs),
                outcomes,
                handle: Some(handle),
            }
        } else {
            Mode::Inline {
                trainer: Box::new(trainer),
                done: None,
            }
        };
        Ok(Self { mode, busy: false })
    }

    /// Whether a round is under way (or finished and not yet picked up).
    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// Starts a round (inline: runs it now).
    pub fn submit(&mut self, job: Job) {
        self.busy = true;
        match &mut self.mode {
            Mode::Inline { trainer, done } => *done = Some(trainer.round(job)),
            Mode::Thread { jobs, .. } => {
                if let Some(j) = jobs.as_ref() {
                    // A send fails only if the thread died; `poll` reports that.
                    if j.send(job).is_err() {
                        log::warn!("the adaptation thread has stopped");
                    }
                }
            }
        }
    }

    /// The finished round's outcome, if there is one.
    pub fn poll(&mut self) -> Option<Result<Outcome, EdgeError>> {
        let got = match &mut self.mode {
            Mode::Inline { done, .. } => done.take(),
            Mode::Thread { outcomes, .. } => match outcomes.try_recv() {
                Ok(o) => Some(o),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Err(EdgeError::Io {
                    path: "adaptation thread".into(),
                    source: std::io::Error::other("the adaptation thread stopped"),
                })),
            },
        };
        if got.is_some() {
            self.busy = false;
        }
        got
    }

    /// Waits for the round under way (for a clean shutdown and for tests).
    pub fn wait(&mut self) -> Option<Result<Outcome, EdgeError>> {
        if !self.busy {
            return None;
        }
        let got = match &mut self.mode {
            Mode::Inline { done, .. } => done.take(),
            Mode::Thread { outcomes, .. } => Some(outcomes.recv().unwrap_or_else(|_| {
                Err(EdgeError::Io {
                    path: "adaptation thread".into(),
                    source: std::io::Error::other("the adaptation thread stopped"),
                })
            })),
        };
        self.busy = false;
        got
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Mode::Thread { jobs, handle, .. } = &mut self.mode {
            jobs.take();
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// Nice 19 for the calling thread (Linux applies `setpriority(PRIO_PROCESS, 0)` per thread).
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its integer arguments.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}
