"""The load generator: run wrk, read its report and the latency histogram its Lua hook prints."""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Appended to a wrk Lua script, prints the whole latency histogram so rounds merge exactly.
LATENCY_HOOK = """done = function(summary, latency, requests)
  for i = 1, #latency do
    local value, count = latency(i)
    io.write(string.format("LATENCY_US %d %d\\n", value, count))
  end
end
"""
# Counts every answer by status and checks each body: `expected` bodies are Lua strings, each
# counted apart (ok1, ok2, …), so a test can see which model version answered; a 2xx body that is
# none of them is wrong, a 503 without Retry-After is counted. Per-thread counts meet in `done`.
# A body matches if it is the same text with every number within 1e-5 (relative) of the
# expected one: a row run inside a batch may differ from the same row run alone in its last
# float32 bits (onnxruntime picks other kernels for other batch sizes).
CHECK_TEMPLATE = """local threads = {{}}
local expected = {{ {expected} }}
local NUMBER = "%-?%d[%d%.]*[eE]?[-+]?%d*"
local function same(body, want)
  if body == want then return true end
  if body:gsub(NUMBER, "#") ~= want:gsub(NUMBER, "#") then return false end
  local got = {{}}
  for n in body:gmatch(NUMBER) do got[#got + 1] = tonumber(n) end
  local i = 0
  for n in want:gmatch(NUMBER) do
    i = i + 1
    local a, b = got[i], tonumber(n)
    if a == nil or b == nil or math.abs(a - b) > 1e-5 * math.max(math.abs(b), 1e-3) then return false end
  end
  return i == #got
end
function setup(thread) table.insert(threads, thread) end
function init(args)
  s200 = 0; s503 = 0; s429 = 0; sother = 0; wrong = 0; noretry = 0
  for i = 1, #expected do _G["ok" .. i] = 0 end
end
function response(status, headers, body)
  if status == 200 then
    s200 = s200 + 1
    local matched = false
    for i = 1, #expected do
      if same(body, expected[i]) then _G["ok" .. i] = _G["ok" .. i] + 1; matched = true; break end
    end
    if not matched then wrong = wrong + 1 end
  elseif status == 503 then
    s503 = s503 + 1
    if headers["Retry-After"] == nil and headers["retry-after"] == nil then noretry = noretry + 1 end
  elseif status == 429 then s429 = s429 + 1
  else sother = sother + 1 end
end
done = function(summary, latency, requests)
  local names = {{"s200", "s503", "s429", "sother", "wrong", "noretry"}}
  for i = 1, #expected do table.insert(names, "ok" .. i) end
  for _, name in ipairs(names) do
    local total = 0
    for _, thread in ipairs(threads) do total = total + (thread:get(name) or 0) end
    io.write(string.format("CHECK %s %d\\n", name, total))
  end
  for i = 1, #latency do
    local value, count = latency(i)
    io.write(string.format("LATENCY_US %d %d\\n", value, count))
  end
end
"""


def _lua_string(text: str) -> str:
    return '"' + "".join(c if c.isalnum() or c in " .,:_-[]{}" else f"\\{ord(c):03d}" for c in text) + '"'


def checking_script(body: bytes, expected: list[bytes], headers: dict[str, str] | None = None) -> str:
    """A wrk Lua script that POSTs `body` and counts statuses and wrong answers (see CHECK_TEMPLATE)."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    table = ", ".join(_lua_string(e.decode()) for e in expected)
    return "\n".join(lines) + "\n" + CHECK_TEMPLATE.format(expected=table)


def parse_checks(output: str) -> dict[str, int]:
    """The `CHECK name count` lines a checking script prints (s200, s503, wrong, ok1, …)."""
    return {k: int(v) for k, v in re.findall(r"^CHECK (\w+) (\d+)$", output, re.M)}


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"cannot read wrk's latency {text!r}")
    return float(match[1]) * _UNIT_MS[match[2]]


@dataclass
class WrkResult:
    rps: float
    requests: int
    percentiles: dict[int, float]  # 50/75/90/99 → ms
    non_2xx: int
    socket_errors: dict[str, int]
    wall_s: float
    cpu_s: float  # wrk's own CPU time
    output: str
    histogram: list[tuple[int, int]] = field(default_factory=list)  # (latency µs, count), if printed

    @property
    def load_s(self) -> float:
        """The seconds wrk itself says it loaded for: its process runs longer (connecting,
        closing 256 connections, the Lua `done` hook), which would understate a rate."""
        found = re.search(r"^\s*\d+ requests in ([\d.]+)(us|ms|s|m|h),", self.output, re.M)
        return self.wall_s if found is None else float(found[1]) * _UNIT_MS[found[2]] / 1000

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    @classmethod
    def merge(cls, parts: list[WrkResult]) -> WrkResult:
        """Several loads of one target as one: totals summed, percentiles from the merged
        latency histograms (exact), requests/s over the summed load time."""
        histogram = sorted(pair for part in parts for pair in part.histogram)
        requests, wall = sum(p.requests for p in parts), sum(p.wall_s for p in parts)
        return cls(
            rps=requests / wall,
            requests=requests,
            percentiles=_percentiles(histogram) if histogram else parts[0].percentiles,
            non_2xx=sum(p.non_2xx for p in parts),
            socket_errors={k: sum(p.socket_errors[k] for p in parts) for k in parts[0].socket_errors},
            wall_s=wall,
            cpu_s=sum(p.cpu_s for p in parts),
            output="\n".join(p.output for p in parts),
            histogram=histogram,
        )


def _percentiles(histogram: list[tuple[int, int]]) -> dict[int, float]:
    """50/75/90/99th percentiles in ms of a sorted (latency µs, count) histogram."""
    total = sum(count for _, count in histogram)
    found: dict[int, float] = {}
    seen = 0
    wanted = [50, 75, 90, 99]
    for value, count in histogram:
        seen += count
        while wanted and seen >= total * wanted[0] / 100:
            found[wanted.pop(0)] = value / 1000
    return found


def parse_histogram(output: str) -> list[tuple[int, int]]:
    """The `LATENCY_US value count` lines printed by the Lua `done` hook (LATENCY_HOOK above)."""
    return [(int(v), int(c)) for v, c in re.findall(r"^LATENCY_US (\d+) (\d+)$", output, re.M)]


def parse_wrk(output: str) -> tuple[float, int, dict[int, float], int, dict[str, int]]:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ", output, re.M)
    if rps is None or total is None:
        raise RuntimeError(f"cannot read wrk's report:\n{output}")
    percentiles = {int(p): _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M)}
    if 50 not in percentiles or 99 not in percentiles:
        raise RuntimeError(f"wrk printed no latency distribution (--latency):\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = dict(
        zip(
            ("connect", "read", "write", "timeout"), map(int, sock.groups() if sock else [0] * 4), strict=True
        )
    )
    return float(rps[1]), int(total[1]), percentiles, int(non_2xx[1]) if non_2xx else 0, socket_errors


def run_wrk(
    wrk: str, url: str, lua: Path, duration: int, connections: int, threads: int, *extra: str
) -> WrkResult:
    """One wrk run (`extra`: more wrk flags, e.g. --timeout), with the CPU time wrk itself used."""
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        *extra,
        "-s",
        str(lua),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped here
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}:\n{output}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return WrkResult(
        *parse_wrk(output), wall_s=wall, cpu_s=cpu, output=output, histogram=parse_histogram(output)
    )


def add_load_options(parser: argparse.ArgumentParser, *, duration: int, warmup: int) -> None:
    """The wrk load every serving benchmark takes: how long, how wide."""
    parser.add_argument(
        "--duration", type=int, default=duration, help=f"seconds of load per server (default {duration})"
    )
    parser.add_argument(
        "--warmup", type=int, default=warmup, help=f"seconds of warm-up load per server (default {warmup})"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")


def find_wrk() -> str:
    """wrk's path, or exit with a line saying how to install it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("this benchmark needs wrk on PATH: scripts/install-debian-tool.sh wrk installs it (as root)")
    return wrk
