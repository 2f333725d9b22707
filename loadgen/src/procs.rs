//! CPU seconds of each process of the stack during a run, and its resident memory at the end
//! of the load, read from `/proc`.
//!
//! Processes are named by what they are: `surge <subcommand>` for Surge's services,
//! `surge-loadgen` for this client, `postgres` for the server and its backends, `kafka` for
//! the broker's JVM, `peer-<name>` for the benchmark peers. A name's figure is the sum over
//! its processes; processes reaped during the run count through their parent's children
//! time (Postgres' backends through the postmaster). Memory ([`memory_now`]) is `VmRSS`,
//! `VmHWM` (the peak) and `RssAnon` (private) of `/proc/<pid>/status`, summed the same way:
//! for Postgres the sum counts the shared buffers once in every backend that touched them, so
//! its private memory is the figure that adds up.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Linux's USER_HZ: the unit of the times in `/proc/<pid>/stat`.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds by process name, and the whole machine's busy seconds, at one instant.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    by_name: BTreeMap<String, f64>,
    machine: f64,
}

/// One process name's CPU over a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessCpu {
    pub process: String,
    pub cpu_secs: f64,
    /// CPU seconds per 1,000 operations of the run.
    pub per_1k_ops: Option<f64>,
}

/// What a process is, from its command line (NUL-separated) and `comm`.
pub fn classify(cmdline: &str, comm: &str) -> Option<String> {
    let args: Vec<&str> = cmdline.split('\0').filter(|a| !a.is_empty()).collect();
    let program = args.first().map(|a| a.rsplit('/').next().unwrap_or(a))?;
    if comm == "postgres" || program == "postgres" || program.starts_with("postgres:") {
        return Some("postgres".to_string());
    }
    if program == "surge" {
        let sub = args.iter().skip(1).find(|a| !a.starts_with('-'))?;
        return Some(format!("surge {sub}"));
    }
    if program == "surge-loadgen" || program.starts_with("peer-") {
        return Some(program.to_string());
    }
    if program == "java" && args.contains(&"kafka.Kafka") {
        return Some("kafka".to_string());
    }
    None
}

/// utime + stime (+ the reaped children's, when `children`) of one `/proc/<pid>/stat` line.
fn stat_secs(stat: &str, children: bool) -> f64 {
    // The fields after the command name in parentheses (which may hold spaces).
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let own = tick(11) + tick(12);
    let reaped = if children { tick(13) + tick(14) } else { 0.0 };
    (own + reaped) / TICKS_PER_SEC
}

/// Busy seconds of the whole machine (user, nice, system, irq, softirq, steal).
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0.0 };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    [0usize, 1, 2, 5, 6, 7].iter().filter_map(|i| v.get(*i)).sum::<f64>() / TICKS_PER_SEC
}

/// Every process of the stack now: its name ([`classify`]) and its `/proc/<pid>` directory.
fn stack_processes() -> Vec<(String, std::path::PathBuf)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read_to_string(path.join("cmdline")).unwrap_or_default();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if let Some(name) = classify(&cmdline, comm.trim()) {
            found.push((name, path));
        }
    }
    found
}

impl CpuSample {
    /// Reads every process of the stack now.
    pub fn now() -> CpuSample {
        let mut by_name = BTreeMap::<String, f64>::new();
        for (name, path) in stack_processes() {
            let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
                continue;
            };
            *by_name.entry(name).or_default() += stat_secs(&stat, true);
        }
        CpuSample {
            by_name,
            machine: machine_busy_secs(),
        }
    }

    /// CPU per process name between `self` (earlier) and `later`, with `ops` operations done
    /// in between; the last rows are the whole machine and what no named process explains.
    pub fn usage(&self, later: &CpuSample, ops: u64) -> Vec<ProcessCpu> {
        let per_1k = |secs: f64| (ops > 0).then(|| secs / ops as f64 * 1000.0);
        let mut rows: Vec<ProcessCpu> = later
            .by_name
            .iter()
            .map(|(name, after)| {
                // A process that restarted during the run counts from zero.
                let before = self.by_name.get(name).copied().unwrap_or(0.0);
                let secs = if *after >= before { after - before } else { *after };
                ProcessCpu {
                    process: name.clone(),
                    cpu_secs: secs,
                    per_1k_ops: per_1k(secs),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.cpu_secs.total_cmp(&a.cpu_secs));
        let named: f64 = rows.iter().map(|r| r.cpu_secs).sum();
        let machine = (later.machine - self.machine).max(0.0);
        rows.push(ProcessCpu {
            process: "machine (all)".to_string(),
            cpu_secs: machine,
            per_1k_ops: per_1k(machine),
        });
        let other = (machine - named).max(0.0);
        rows.push(ProcessCpu {
            process: "other".to_string(),
            cpu_secs: other,
            per_1k_ops: per_1k(other),
        });
        rows
    }
}

/// The memory lines of one `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStatus {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most that was ever resident (the peak of `VmRSS`).
    pub peak_rss_kib: u64,
    /// `RssAnon`: the resident memory no other process shares (heap, stacks).
    pub anon_kib: u64,
}

/// The memory of a `/proc/<pid>/status` text; `None` without a `VmRSS` line (a kernel thread,
/// a process that is exiting).
pub fn parse_status(status: &str) -> Option<MemoryStatus> {
    let kib = |key: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix(':')?;
            let mut words = value.split_whitespace();
            let n = words.next()?.parse::<u64>().ok()?;
            // The kernel writes every size in kB (KiB); anything else is not one of these lines.
            (words.next() == Some("kB")).then_some(n)
        })
    };
    let rss_kib = kib("VmRSS")?;
    Some(MemoryStatus {
        rss_kib,
        peak_rss_kib: kib("VmHWM").unwrap_or(rss_kib),
        anon_kib: kib("RssAnon").unwrap_or(0),
    })
}

/// One process name's resident memory at one instant: the sums over its processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessMemory {
    pub process: String,
    /// How many processes the figures add up (Postgres: the postmaster and every backend).
    pub processes: u32,
    /// `VmRSS` summed, KiB.
    pub rss_kib: u64,
    /// `VmHWM` (each process's peak) summed, KiB.
    pub peak_rss_kib: u64,
    /// `RssAnon` summed, KiB: private memory, counted once even for Postgres.
    pub anon_kib: u64,
}

/// The resident memory of every process of the stack now, by name, largest first.
pub fn memory_now() -> Vec<ProcessMemory> {
    let mut by_name = BTreeMap::<String, ProcessMemory>::new();
    for (name, path) in stack_processes() {
        let Some(m) = std::fs::read_to_string(path.join("status"))
            .ok()
            .as_deref()
            .and_then(parse_status)
        else {
            continue;
        };
        let row = by_name.entry(name.clone()).or_insert(ProcessMemory {
            process: name,
            processes: 0,
            rss_kib: 0,
            peak_rss_kib: 0,
            anon_kib: 0,
        });
        row.processes += 1;
        row.rss_kib += m.rss_kib;
        row.peak_rss_kib += m.peak_rss_kib;
        row.anon_kib += m.anon_kib;
    }
    let mut rows: Vec<ProcessMemory> = by_name.into_values().collect();
    rows.sort_by_key(|m| std::cmp::Reverse(m.rss_kib));
    rows
}

/// Waits (at most `limit`) until the machine's busy share over one second, all cores
/// together, is below `share`; how long that took.
pub async fn wait_until_quiet(share: f64, limit: std::time::Duration) -> std::time::Duration {
    let started = std::time::Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // Two quiet seconds in a row: one can fall between a projector's batches.
    let mut quiet = 0;
    while started.elapsed() < limit && quiet < 2 {
        let before = machine_busy_secs();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let busy = (machine_busy_secs() - before) / cores;
        quiet = if busy < share { quiet + 1 } else { 0 };
    }
    started.elapsed()
}

/// Sets the CPU priority of every thread of the Kafka broker (on Linux a nice value is a
/// thread's); how many threads were changed. The benchmark raises the broker to the request
/// path's priority for a target that waits for it, and lowers it again after.
pub fn renice_broker(nice: i32) -> anyhow::Result<usize> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let path = entry.path();
        let cmdline = std::fs::read_to_string(path.join("cmdline")).unwrap_or_default();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if classify(&cmdline, comm.trim()).as_deref() != Some("kafka") {
            continue;
        }
        for task in std::fs::read_dir(path.join("task"))?.flatten() {
            tids.push(task.file_name().to_string_lossy().to_string());
        }
    }
    anyhow::ensure!(!tids.is_empty(), "no Kafka broker process found");
    let status = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&tids)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "renice of the broker's threads failed ({status})");
    Ok(tids.len())
}

/// The rows without the Kafka broker's unless `keep`: a target that never talks to the broker
/// is not billed for it idling.
pub fn without_broker(rows: Vec<ProcessCpu>, keep: bool) -> Vec<ProcessCpu> {
    rows.into_iter().filter(|r| keep || r.process != "kafka").collect()
}

/// Whether a row names a process of the serving side: not this load client, not the
/// machine's total, not the unnamed rest.
pub fn is_server(process: &str) -> bool {
    !matches!(process, "surge-loadgen" | "machine (all)" | "other")
}

/// CPU seconds of the serving side: every named process but this load client.
pub fn server_secs(rows: &[ProcessCpu]) -> f64 {
    rows.iter().filter(|r| is_server(&r.process)).map(|r| r.cpu_secs).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_named_by_what_they_run() {
        assert_eq!(
            classify("/root/.cache/surge/target/release/surge\0command-api\0", "surge"),
            Some("surge command-api".into())
        );
        assert_eq!(
            classify("/x/release/surge-loadgen\0browse\0", "surge-loadgen"),
            Some("surge-loadgen".into())
        );
        assert_eq!(
            classify("postgres: 15/main: surge surge 127.0.0.1(5432) idle", "postgres"),
            Some("postgres".into())
        );
        assert_eq!(
            classify("/usr/bin/java\0-Xmx1G\0kafka.Kafka\0server.properties\0", "java"),
            Some("kafka".into())
        );
        assert_eq!(
            classify("/x/release/peer-esrs\0--addr\0", "peer-esrs"),
            Some("peer-esrs".into())
        );
        assert_eq!(classify("/usr/bin/bash\0-c\0", "bash"), None);
    }

    #[test]
    fn stat_times_skip_a_command_name_with_spaces() {
        // pid (comm) state ppid ... utime stime cutime cstime (fields 14-17)
        let stat = "42 (postgres: 15/main: walwriter) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 30 20 20 0 1 0";
        assert_eq!(stat_secs(stat, false), 3.0);
        assert_eq!(stat_secs(stat, true), 3.5);
    }

    #[test]
    fn memory_is_read_from_a_status_text() {
        let status = "Name:\tpostgres\nUmask:\t0077\nState:\tS (sleeping)\nVmPeak:\t  230564 kB\n\
                      VmSize:\t  230404 kB\nVmHWM:\t   41236 kB\nVmRSS:\t   38120 kB\nRssAnon:\t    4312 kB\n\
                      RssFile:\t   12000 kB\nRssShmem:\t   21808 kB\nVmData:\t    5000 kB\nThreads:\t1\n";
        assert_eq!(
            parse_status(status),
            Some(MemoryStatus {
                rss_kib: 38_120,
                peak_rss_kib: 41_236,
                anon_kib: 4_312
            })
        );
        // A kernel thread has no memory lines; a line with another unit is not read as KiB.
        assert_eq!(
            parse_status("Name:\tkworker/0:1\nState:\tI (idle)\nThreads:\t1\n"),
            None
        );
        assert_eq!(parse_status("VmRSS:\t 12 MB\n"), None);
        // Prefixes are whole keys: VmRSSx or RssAnonymous would not count.
        let odd = "VmRSSx:\t1 kB\nVmRSS:\t7 kB\nRssAnonymous:\t9 kB\n";
        assert_eq!(
            parse_status(odd),
            Some(MemoryStatus {
                rss_kib: 7,
                peak_rss_kib: 7,
                anon_kib: 0
            })
        );
    }

    #[test]
    fn this_process_memory_is_found() {
        let own = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
        let m = parse_status(&own).expect("a user process has VmRSS");
        assert!(
            m.rss_kib > 0 && m.peak_rss_kib >= m.rss_kib && m.anon_kib <= m.rss_kib,
            "{m:?}"
        );
    }

    #[test]
    fn usage_is_per_process_and_per_1k_ops() {
        let before = CpuSample {
            by_name: [("postgres".to_string(), 10.0), ("surge relay".to_string(), 5.0)].into(),
            machine: 100.0,
        };
        let after = CpuSample {
            by_name: [
                ("postgres".to_string(), 14.0),
                ("surge relay".to_string(), 1.0),
                ("surge-loadgen".to_string(), 2.0),
            ]
            .into(),
            machine: 110.0,
        };
        let rows = before.usage(&after, 2000);
        let get = |n: &str| rows.iter().find(|r| r.process == n).map(|r| r.cpu_secs);
        assert_eq!(get("postgres"), Some(4.0));
        assert_eq!(get("surge relay"), Some(1.0), "restarted: counted from zero");
        assert_eq!(get("machine (all)"), Some(10.0));
        assert_eq!(get("other"), Some(3.0));
        assert_eq!(rows[0].per_1k_ops, Some(2.0));
        assert_eq!(server_secs(&rows), 5.0);
    }
}
