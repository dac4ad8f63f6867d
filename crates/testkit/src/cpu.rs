//! CPU time a process has used, for benchmarks that report cost next to speed (on a small
//! shared machine the load generator and the server compete for the same cores).

use std::time::Duration;

/// User + system CPU time process `pid` has used so far (`None`: this process); zero when
/// it cannot be read (the process is gone).
pub fn process_cpu(pid: Option<u32>) -> Duration {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    // The command name (field 2) may contain spaces: count fields after its `)`, where
    // utime and stime are the 12th and 13th.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // Clock ticks are 100 per second on Linux (USER_HZ).
    Duration::from_millis(ticks * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_cpu_and_a_missing_one_none() {
        let start = process_cpu(None);
        let mut x = 0u64;
        let until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < until {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(
            process_cpu(None) > start,
            "50 ms of spinning shows as CPU time"
        );
        assert_eq!(process_cpu(Some(u32::MAX)), Duration::ZERO);
    }
}
