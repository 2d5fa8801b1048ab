import json, os, subprocess, sys, statistics as st
wl = json.load(open("/tmp/perf/wl.json"))
env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
env.update(PYTHONPATH="sidecar", PYTHONUNBUFFERED="1")
def start():
    p = subprocess.Popen([".venv/bin/python", "scripts/bench_inprocess.py", "serve", "--tokenizer-dir", "/tmp/perf/mlxlm", "--workload", "/tmp/perf/wl.json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    while True:
        line = p.stdout.readline()
        if line.startswith("{") and "ready" in line: return p
def ask(p, ids):
    p.stdin.write(json.dumps({"prompt": ids, "max_tokens": 32}) + "\n"); p.stdin.flush()
    while True:
        line = p.stdout.readline()
        if line.startswith("{"): r = json.loads(line); break
    return (r["tokens"] - 1) / (r["last_token"] - r["first_token"]), (r["first_token"] - r["start"]) * 1e3
for session in range(int(sys.argv[1])):
    if session % 2: b = start(); a = start()
    else: a = start(); b = start()
    ratios, dt = [], []
    for i, ids in enumerate(wl["levels"][0]["prompts"][:int(sys.argv[2])]):
        if i % 2: ra = ask(a, ids); rb = ask(b, ids)
        else: rb = ask(b, ids); ra = ask(a, ids)
        ratios.append(ra[0] / rb[0]); dt.append(ra[1] - rb[1])
    print(f"session {session} ({'B' if session % 2 else 'A'} started first): A/B decode ratio median {st.median(ratios):.3f} (min {min(ratios):.3f} max {max(ratios):.3f}), TTFT diff median {st.median(dt):+.2f} ms", flush=True)
    for p in (a, b): p.stdin.close(); p.wait()
