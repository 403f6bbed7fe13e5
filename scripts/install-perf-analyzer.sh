#!/usr/bin/env bash
# install-perf-analyzer.sh [DIR]: Triton's perf_analyzer into DIR (default .perf_analyzer/), from
# the binary bundled in the tritonclient 2.51.0 wheel, with the two shared libraries it links and
# these machines lack: Debian's libb64-0d (downloaded and unpacked, not installed) and libcudart
# from the nvidia-cuda-runtime-cu12 wheel (no GPU is needed). Prints the command to run:
#   DIR/perf_analyzer -m simple -i grpc -u 127.0.0.1:8001 --concurrency-range 1:32
set -euo pipefail
dir="${1:-.perf_analyzer}"
pip="${PIP:-.venv/bin/pip}"
if [ -x "$dir/perf_analyzer" ]; then
  echo "$dir/perf_analyzer"
  exit 0
fi
mkdir -p "$dir/download" "$dir/lib"
"$pip" download -q --no-deps -d "$dir/download" tritonclient==2.51.0 nvidia-cuda-runtime-cu12
(cd "$dir/download" && apt-get download -q libb64-0d >/dev/null 2>&1)
python3 - "$dir" <<'PY'
import glob, os, shutil, subprocess, sys, zipfile
dir = sys.argv[1]
down = os.path.join(dir, "download")
with zipfile.ZipFile(glob.glob(os.path.join(down, "tritonclient-2.51.0-*.whl"))[0]) as wheel:
    with wheel.open("tritonclient-2.51.0.data/data/bin/perf_analyzer") as src, open(os.path.join(dir, "perf_analyzer.bin"), "wb") as out:
        shutil.copyfileobj(src, out)
with zipfile.ZipFile(glob.glob(os.path.join(down, "nvidia_cuda_runtime_cu12-*.whl"))[0]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith("/libcudart.so.12"))
    with wheel.open(name) as src, open(os.path.join(dir, "lib", "libcudart.so.12"), "wb") as out:
        shutil.copyfileobj(src, out)
subprocess.run(["dpkg", "-x", glob.glob(os.path.join(down, "libb64-0d_*.deb"))[0], os.path.join(down, "deb")], check=True)
shutil.copy(glob.glob(os.path.join(down, "deb", "usr", "lib", "*", "libb64.so.0d"))[0], os.path.join(dir, "lib"))
PY
chmod +x "$dir/perf_analyzer.bin"
cat > "$dir/perf_analyzer" <<'SH'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")" && pwd)"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf_analyzer.bin" "$@"
SH
chmod +x "$dir/perf_analyzer"
rm -rf "$dir/download"
echo "$dir/perf_analyzer"
