//! The processes a run starts (Surge's services, a peer, the fault proxy), each with its output
//! in a log file of its own, and the guarantee that none outlives the run: [`Children`] stops
//! and awaits them when asked, and when dropped (a run that fails part-way).

use anyhow::Context;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a process has to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(15);

/// A program and its arguments, run at a CPU priority `nice` steps below the caller's (`nice
/// -n`, so that `ps` and the CPU accounting of [`crate::procs`] still see the program itself).
pub fn command<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S], nice: i32) -> Command {
    let mut cmd = if nice == 0 {
        Command::new(program)
    } else {
        let mut c = Command::new("nice");
        c.arg("-n").arg(nice.to_string()).arg(program);
        c
    };
    cmd.args(args);
    cmd
}

/// Running children by name; each writes to `<run_dir>/<log>.log`.
pub struct Children {
    run_dir: PathBuf,
    running: BTreeMap<String, Child>,
}

impl Children {
    pub fn new(run_dir: &Path) -> anyhow::Result<Children> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        Ok(Children {
            run_dir: run_dir.to_path_buf(),
            running: BTreeMap::new(),
        })
    }

    /// Where `log` goes.
    pub fn log_path(&self, log: &str) -> PathBuf {
        self.run_dir.join(format!("{log}.log"))
    }

    /// Starts `cmd` as `name`, stdout and stderr to `<log>.log` (appended to when `append`, as a
    /// restarted process does; truncated otherwise).
    pub fn start(&mut self, name: &str, log: &str, append: bool, mut cmd: Command) -> anyhow::Result<()> {
        let path = self.log_path(log);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        if let Some(mut old) = self.running.insert(name.to_string(), child) {
            kill(&mut old);
        }
        Ok(())
    }

    /// The process id of `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.running.get(name).map(Child::id)
    }

    /// Sends `signal` (a `kill -s` name: `USR1`, `TERM`, ...) to `name`.
    pub fn signal(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(name).with_context(|| format!("{name} is not running"))?;
        send_signal(pid, signal)
    }

    /// SIGKILL to `name`, as a crash would; awaited.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.running.remove(name) {
            kill(&mut child);
        }
    }

    /// The names of the children that have exited although nobody stopped them.
    pub fn exited(&mut self) -> Vec<String> {
        self.running
            .iter_mut()
            .filter_map(|(name, c)| (!matches!(c.try_wait(), Ok(None))).then(|| name.clone()))
            .collect()
    }

    /// SIGTERM to every child, then waits for them all (SIGKILL to any still running after a
    /// grace period).
    pub fn stop_all(&mut self) {
        for child in self.running.values() {
            let _ = send_signal(child.id(), "TERM");
        }
        let deadline = Instant::now() + GRACE;
        for (_, mut child) in std::mem::take(&mut self.running) {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            kill(&mut child);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn kill(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// `kill -s <signal> <pid>`: the signals a run sends besides SIGKILL (the crate has no unsafe
/// code, so no libc call).
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -s {signal} {pid} failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_stopped_and_reaped_when_dropped() {
        let dir = std::env::temp_dir().join(format!("surge-children-{}", std::process::id()));
        let mut children = Children::new(&dir).unwrap();
        children
            .start("sleeper", "sleeper", false, command("sleep", &["60"], 0))
            .unwrap();
        children
            .start("nice-sleeper", "sleeper", true, command("sleep", &["60"], 5))
            .unwrap();
        let pids = [children.pid("sleeper").unwrap(), children.pid("nice-sleeper").unwrap()];
        assert!(children.exited().is_empty());
        let started = Instant::now();
        drop(children);
        assert!(started.elapsed() < GRACE, "SIGTERM was enough");
        for pid in pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{pid} reaped");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
