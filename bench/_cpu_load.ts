// How busy the machine was over an interval, apart from the processes a bench runs: CPU time the
// whole machine spent (/proc/stat, steal included, since a VM's stolen time slows a bench as much
// as a neighbour's work does) minus the CPU time of the bench's own processes (/proc/<pid>/stat),
// in cores (1.0 = one core fully used by others on average). Linux only; elsewhere null.

const CLOCK_TICKS_PER_S = 100; // USER_HZ, 100 on every Linux the bench runs on (getconf CLK_TCK)

/** One reading of the counters. */
export interface CpuLoadSample {
  t: number;
  /** Machine busy time in ticks (user, nice, system, irq, softirq, steal). */
  busy: number;
  steal: number;
  /** utime + stime of the watched processes, ticks. */
  own: number;
  loadavg1: number;
}

/** What others used between two samples. */
export interface CpuLoadInterval {
  seconds: number;
  /** Average cores used by processes other than the watched ones (steal included). */
  othersCores: number;
  /** Average cores stolen by the hypervisor (part of othersCores). */
  stealCores: number;
  /** Average cores used by the watched processes. */
  ownCores: number;
  loadavg1: number;
}

function readText(path: string): string | null {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return null;
  }
}

function processTicks(pid: number | "self"): number {
  const stat = readText(`/proc/${pid}/stat`);
  if (stat === null) return 0; // the process has exited: its time is no longer anyone's
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

/**
 * Reads the counters now, for the bench's own process and `pids` (its child processes).
 * Returns null where /proc is not there.
 */
export function sampleCpuLoad(pids: readonly number[] = []): CpuLoadSample | null {
  const stat = readText("/proc/stat");
  if (stat === null) return null;
  const [user, nice, system, _idle, _iowait, irq, softirq, steal] = stat.split("\n")[0].trim().split(/\s+/)
    .slice(1).map(Number);
  let own = processTicks("self");
  for (const pid of pids) own += processTicks(pid);
  const loadavg1 = Number(readText("/proc/loadavg")?.split(" ")[0] ?? NaN);
  return { t: performance.now(), busy: user + nice + system + irq + softirq + steal, steal, own, loadavg1 };
}

/** The interval between two samples (null if either is). */
export function cpuLoadBetween(a: CpuLoadSample | null, b: CpuLoadSample | null): CpuLoadInterval | null {
  if (a === null || b === null) return null;
  const seconds = (b.t - a.t) / 1000;
  const cores = (ticks: number) => Math.max(0, ticks) / CLOCK_TICKS_PER_S / Math.max(seconds, 1e-9);
  return {
    seconds,
    othersCores: cores(b.busy - a.busy - (b.own - a.own)),
    stealCores: cores(b.steal - a.steal),
    ownCores: cores(b.own - a.own),
    loadavg1: b.loadavg1,
  };
}
