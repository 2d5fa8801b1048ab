"""Pools the pairs and waves of several `bench --paired` JSON files: per level, the median ratio
with its distribution-free 95 % interval (as the bench computes it), the pooled ratio and the
TTFT difference.  Usage: python3 pool.py a.json b.json ..."""
import json,sys,math,statistics as st
def ci(v):
    v=sorted(v); n=len(v)
    lnh=n*math.log(0.5); lc=0; below=0; k=0
    while True:
        nxt=below+math.exp(lc+lnh)
        if nxt>0.025 or k+1>n//2: break
        below=nxt; k+=1; lc+=math.log(n-k+1)-math.log(k)
    lo,hi=(v[0],v[-1]) if k==0 else (v[k-1],v[n-k])
    return st.median(v),lo,hi
def agg(run):
    t=sum(r['tokens'] for r in run['requests']); return t/run['wall_s']
def p50(run): return st.median([1e3*(r['first_token']-r['start']) for r in run['requests']])
def dec(r): return (r['tokens']-1)/(r['last_token']-r['first_token'])
files=sys.argv[1:]
pairs=[];waves={}
for f in files:
    d=json.load(open(f))
    pairs+=d.get('pairs') or []
    for w in d.get('waves') or []:
        waves.setdefault(w['concurrency'],[]).append(w)
if pairs:
    r=[dec(p['sidecar'])/dec(p['inprocess']) for p in pairs]
    t=[1e3*((p['sidecar']['first_token']-p['sidecar']['start'])-(p['inprocess']['first_token']-p['inprocess']['start'])) for p in pairs]
    print('1: n=%d decode %.3f (%.3f-%.3f)'%((len(r),)+ci(r)), 'ttft %+.2f (%.2f to %.2f)'%ci(t))
for c,ws in sorted(waves.items()):
    r=[agg(w['sidecar'])/agg(w['inprocess']) for w in ws]
    t=[p50(w['sidecar'])-p50(w['inprocess']) for w in ws]
    pooled=(sum(sum(x['tokens'] for x in w['sidecar']['requests']) for w in ws)/sum(w['sidecar']['wall_s'] for w in ws))/(sum(sum(x['tokens'] for x in w['inprocess']['requests']) for w in ws)/sum(w['inprocess']['wall_s'] for w in ws))
    print('%d: n=%d agg %.3f (%.3f-%.3f)'%((c,len(r))+ci(r)), 'pooled %.3f'%pooled, 'ttft p50 %+.1f (%.1f to %.1f)'%ci(t))
