#!/usr/bin/env python3
"""Extract one subtree of a git commit file by file, skipping blobs the mirror lacks.

`git archive` stops at the first missing blob; the microshift mirror lacks a few
test-data blobs that the kube-apiserver build never reads.
usage: real-apiserver-extract.py GITDIR REV PREFIX DEST
"""
import os
import subprocess
import sys

gitdir, rev, prefix, dest = sys.argv[1:5]
prefix = prefix.rstrip("/") + "/"
tree = subprocess.run(
    ["git", "--git-dir", gitdir, "ls-tree", "-r", "-z", rev, "--", prefix],
    check=True, capture_output=True).stdout.split(b"\0")
entries = []
for line in tree:
    if not line:
        continue
    meta, path = line.split(b"\t", 1)
    mode, kind, sha = meta.split()
    if kind != b"blob":
        continue  # submodules
    entries.append((mode.decode(), sha.decode(), path.decode()))

cat = subprocess.Popen(["git", "--git-dir", gitdir, "cat-file", "--batch"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
missing = 0
for mode, sha, path in entries:
    cat.stdin.write((sha + "\n").encode())
    cat.stdin.flush()
    header = cat.stdout.readline().split()
    if len(header) < 3 or header[1] == b"missing":
        missing += 1
        continue
    size = int(header[2])
    data = cat.stdout.read(size)
    cat.stdout.read(1)  # trailing newline
    out = os.path.join(dest, path[len(prefix):])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if os.path.lexists(out):
        os.unlink(out)
    if mode == "120000":
        os.symlink(data.decode(), out)
        continue
    with open(out, "wb") as f:
        f.write(data)
    if mode == "100755":
        os.chmod(out, 0o755)
cat.stdin.close()
cat.wait()
print(f"extracted {len(entries) - missing} files, {missing} missing blobs skipped")
