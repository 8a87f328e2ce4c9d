#!/usr/bin/env python3
"""Count module cycles between the top-level modules of each crate.

An edge m -> n is a `crate::n` (or, in a top-level file, `super::n`) path in
m's code: comments (doc links included) and test code (`tests.rs` files,
`tests/` directories, a trailing `#[cfg(test)] mod tests`) do not count.
SHOW=N prints the first N cycles.
"""
import os, re, sys, itertools
root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
def crate_graph(src):
    mods = {}
    for e in os.listdir(src):
        p = os.path.join(src, e)
        if e.endswith('.rs') and e not in ('lib.rs', 'main.rs'):
            mods[e[:-3]] = [p]
        elif os.path.isdir(p) and e != 'bin':
            files = []
            for d, _, fs in os.walk(p):
                if 'tests' in os.path.relpath(d, src).split(os.sep):
                    continue
                files += [os.path.join(d, f) for f in fs if f.endswith('.rs') and f != 'tests.rs']
            mods[e] = files
    g = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            text = open(f).read()
            # drop test modules (#[cfg(test)] mod tests { ... } at end) roughly
            text = re.split(r'#\[cfg\(test\)\]\s*mod tests', text)[0]
            # drop comments, doc comments (and their intra-doc links) included
            text = re.sub(r'//[^\n]*', '', text)
            refs = set(re.findall(r'\bcrate::(\w+)', text))
            for blk in re.findall(r'use crate::\{([^;]*)\};', text, re.S):
                refs |= set(re.findall(r'(?:^|[{,\s])(\w+)(?=::|\s*[,}]|\s*$)', blk))
            if os.path.dirname(f) == src:
                refs |= set(re.findall(r'\bsuper::(\w+)', text))
            for r in refs:
                if r in g and r != m:
                    g[m].add(r)
    return g
def simple_cycles(g):
    nodes = sorted(g); idx = {n: i for i, n in enumerate(nodes)}; cycles = []
    def dfs(start, v, path, seen):
        for w in g[v]:
            if w == start: cycles.append(list(path))
            elif idx[w] > idx[start] and w not in seen:
                seen.add(w); path.append(w); dfs(start, w, path, seen); path.pop(); seen.discard(w)
    for s in nodes: dfs(s, s, [s], {s})
    return cycles
for crate in ['common', 'enclave', 'parent-proxy', 'tests', 'framing', 'test-support']:
    src = os.path.join(root, crate, 'src')
    if not os.path.isdir(src): continue
    cyc = simple_cycles(crate_graph(src))
    inv = sorted({m for c in cyc for m in c})
    print(f'{crate}: {len(cyc)} cycles among {len(inv)} modules {inv}')
    for c in cyc[:int(os.environ.get("SHOW", "0"))]: print('   ', ' -> '.join(c + [c[0]]))
