"""Which threads run, and for how long, while a client sends single texts back to back.

    sudo python benchmarks/sched_trace.py [--floor] [--calls 150] [--server-args "<options>"]
                                          [--client-env NAME=VALUE ...]

Records the kernel's scheduler events (`perf sched record`: needs perf, and root or
kernel.perf_event_paranoid ≤ 1) while the Go client (`make clients`) sends `--calls` single-text
Embed calls back to back to `ember serve` (or with --floor to `floor_server.py`, raw ORT's work in
a bare grpc.aio handler). Then it counts, per call, for every thread of the server and of the
client: how often it was switched in, its CPU time, and how long it waited for a core once woken;
and the wake-ups that crossed from one process to the other (perf counts a wake-up for the
thread that was running when it happened, a timer's included, so these are an upper bound). On a
2-core machine every µs the client's threads or gRPC's run is a µs one of ONNX Runtime's two
threads does not, so this is the place to see what a call's round trip costs the machine, beside
what it costs the client's clock.

Prints a table and writes out/sched_trace.json; --keep leaves perf's recording in out/.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np

from bench import _ASSIGNMENT, GO_LATENCY, OUT, EmberProcess, FloorProcess, GoClient, cpu_description, export_models
from corpus import load_texts

# perf sched timehist: "<time> [<cpu>] <comm>[<tid>/<pid>] <wait> <sch delay> <run time>" (ms), and
# with -w also "<time> [<cpu>] <comm>[<tid>/<pid>] awakened: <comm>[<tid>/<pid>]"
def _task(prefix: str = "") -> str:
    """A task as timehist prints it, comm[tid/pid] or comm[tid], its groups named with `prefix`."""
    return rf"(?P<{prefix}comm>.+?)\[(?P<{prefix}tid>\d+)(?:/(?P<{prefix}pid>\d+))?\]"


_EVENT = r"^\s*(?P<t>[\d.]+)\s+\[(?P<cpu>\d+)\]\s+" + _task()
_SWITCH = re.compile(_EVENT + r"\s+(?P<wait>[\d.]+)\s+(?P<delay>[\d.]+)\s+(?P<run>[\d.]+)\s*$")
_WAKE = re.compile(_EVENT + r"\s+awakened:\s+" + _task("w") + r"\s*$")


def _ids(m: re.Match, prefix: str = "") -> tuple[int, int]:
    """(tid, pid) of a matched task; timehist leaves the pid out when it is the tid."""
    tid = int(m[prefix + "tid"])
    return tid, int(m[prefix + "pid"] or tid)


def parse_timehist(text: str) -> tuple[list[dict], list[dict]]:
    """perf sched timehist -w output → switch-outs (t, tid, pid, comm, delay_ms, run_ms) and wake-ups
    (t, tid, pid, woken tid, woken pid). A thread's pid is its own tid when timehist leaves it out."""
    switches, wakes = [], []
    for line in text.splitlines():
        m = _WAKE.match(line)
        if m:
            (tid, pid), (wtid, wpid) = _ids(m), _ids(m, "w")
            wakes.append({"t": float(m["t"]), "tid": tid, "pid": pid, "woken_tid": wtid, "woken_pid": wpid})
            continue
        m = _SWITCH.match(line)
        if m:
            tid, pid = _ids(m)
            switches.append({"t": float(m["t"]), "tid": tid, "pid": pid, "comm": m["comm"],
                             "delay_ms": float(m["delay"]), "run_ms": float(m["run"])})
    return switches, wakes


def summarize(switches: list[dict], wakes: list[dict], window: tuple[float, float], calls: int,
              roles: dict[int, str]) -> dict:
    """Per thread of the processes in `roles` (pid → role): switch-ins, CPU (µs) and the mean wait for
    a core once woken (µs), per call, counting only what ran inside `window` (monotonic s); and the
    wake-ups between those processes per call. A run that crosses an edge of the window counts
    for its part inside it; a thread that ran from before the window to after the recording
    without once leaving its core (a spinning ORT thread can) has no switch to count."""
    lo, hi = window
    threads: dict[int, dict] = {}
    for s in switches:
        start = s["t"] - s["run_ms"] / 1e3
        if s["pid"] not in roles or s["t"] < lo or start > hi:
            continue
        run = (min(s["t"], hi) - max(start, lo)) * 1e3
        th = threads.setdefault(s["tid"], {"role": roles[s["pid"]], "comm": s["comm"], "tid": s["tid"],
                                           "main": s["tid"] == s["pid"], "switches": 0, "cpu_ms": 0.0,
                                           "delays": []})
        th["switches"] += 1
        th["cpu_ms"] += run
        th["delays"].append(s["delay_ms"])
    rows = []
    for th in sorted(threads.values(), key=lambda x: (x["role"], -x["cpu_ms"])):
        rows.append({"role": th["role"], "thread": th["comm"] + (" (main)" if th["main"] else ""), "tid": th["tid"],
                     "switches_per_call": th["switches"] / calls, "cpu_us_per_call": th["cpu_ms"] * 1e3 / calls,
                     "mean_wait_for_core_us": float(np.mean(th["delays"])) * 1e3})
    crossing: dict[str, int] = defaultdict(int)
    for w in wakes:
        if lo <= w["t"] <= hi and w["pid"] in roles and w["woken_pid"] in roles:
            crossing[f"{roles[w['pid']]} → {roles[w['woken_pid']]}"] += 1
    per_role: dict[str, float] = defaultdict(float)
    for r in rows:
        per_role[r["role"]] += r["cpu_us_per_call"]
    return {"threads": rows, "wakeups_per_call": {k: v / calls for k, v in sorted(crossing.items())},
            "cpu_us_per_call": dict(per_role)}


def perf_usable() -> str:
    """Why `perf sched record` cannot run here, or ''."""
    if shutil.which("perf") is None:
        return "no perf on this machine (Debian: linux-perf)"
    probe = subprocess.run(["perf", "sched", "record", "-a", "-o", "/dev/null", "--", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return "perf sched record failed: " + (probe.stderr.strip().splitlines() or ["?"])[-1] + \
            " (run as root, or set kernel.perf_event_paranoid to 1 or less)"
    return ""


def client_env(words: list[str]) -> dict[str, str]:
    """--client-env's NAME=VALUE words as a dict."""
    for w in words:
        if not _ASSIGNMENT.match(w):
            raise SystemExit(f"--client-env takes NAME=VALUE words, not {w!r}")
    return dict(w.split("=", 1) for w in words)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--floor", action="store_true", help="trace floor_server.py instead of ember serve")
    ap.add_argument("--calls", type=int, default=150)
    ap.add_argument("--port", type=int, default=50581)
    ap.add_argument("--server-args", default="", help="extra `ember serve` options (or floor_server.py's with --floor)")
    ap.add_argument("--client-env", nargs="*", default=[], metavar="NAME=VALUE",
                    help="environment for the Go client, e.g. GOMAXPROCS=1")
    ap.add_argument("--keep", action="store_true", help="keep perf's recording (out/sched_trace.data)")
    a = ap.parse_args()
    env = client_env(a.client_env)  # before anything is started
    why = perf_usable()
    if why:
        print(why, file=sys.stderr)
        return 2
    if not GO_LATENCY.is_file():
        print(f"{GO_LATENCY} is missing: run make clients", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    models = export_models(OUT / "models", ("fp32",))
    extra = shlex.split(a.server_args)
    server = FloorProcess(models["fp32"], a.port, tuple(extra)) if a.floor else \
        EmberProcess(models["fp32"].parent, a.port, extra)
    data = OUT / "sched_trace.data"
    go = perf = None
    try:
        go = GoClient(server.address, env=env)
        texts = load_texts()[-(a.calls + 20):]
        for t in texts[:20]:
            go.embed(t)
        perf = subprocess.Popen(["perf", "sched", "record", "-a", "-k", "CLOCK_MONOTONIC", "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf is recording
        lat, t0 = [], time.monotonic()
        for t in texts[20:]:
            lat.append(go.embed(t))
        t1 = time.monotonic()
        time.sleep(0.1)
    finally:
        if perf is not None:  # stopped however the calls ended: `perf record -a` runs until told
            perf.send_signal(signal.SIGINT)
            perf.wait(60)
        if go is not None:
            go.close()
        server.stop()
    hist = subprocess.run(["perf", "sched", "timehist", "-w", "-i", str(data)], capture_output=True,
                          text=True, check=True).stdout
    switches, wakes = parse_timehist(hist)
    roles = {server.proc.pid: "server", go.proc.pid: "client"}
    res = summarize(switches, wakes, (t0, t1), len(lat), roles)
    res.update(machine=cpu_description(), server="floor_server.py" if a.floor else "ember serve",
               server_args=a.server_args, client_env=env, calls=len(lat), p50_ms=float(np.median(lat)),
               window_s=t1 - t0)
    (OUT / "sched_trace.json").write_text(json.dumps(res, indent=1))
    if not a.keep:
        data.unlink(missing_ok=True)
    report(res)
    return 0


def report(res: dict) -> None:
    env = " ".join(f"{k}={v}" for k, v in res["client_env"].items()) or "its defaults"
    print(f"\n{res['server']} {res['server_args']}; Go client with {env}; {res['calls']} single texts back to "
          f"back, p50 {res['p50_ms']:.2f} ms; {res['machine']}\n")
    print("| process | thread | tid | switched in, per call | CPU per call (µs) | mean wait for a core once woken "
          "(µs) |")
    print("|---|---|---|---|---|---|")
    for r in res["threads"]:
        print(f"| {r['role']} | {r['thread']} | {r['tid']} | {r['switches_per_call']:.2f} | {r['cpu_us_per_call']:.0f} "
              f"| {r['mean_wait_for_core_us']:.0f} |")
    print("\n" + "; ".join(f"{k}: CPU {v:.0f} µs per call" for k, v in res["cpu_us_per_call"].items()))
    print("wake-ups per call: " + "; ".join(f"{k} {v:.2f}" for k, v in res["wakeups_per_call"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
