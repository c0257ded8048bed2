"""Merkle tree hashing, inclusion and consistency proofs as RFC 9162 (Certificate Transparency 2.0)
defines them (pure; no I/O).

The tree is never held whole. Every function takes the hashes it needs through `RangeHash`, the
Merkle Tree Hash of a contiguous range of leaves `MTH(D[start:end])`, so the same algorithms run over
a list in memory (`ListTree`) and over the hashes of complete subtrees stored in a database
(services/audit/tamper_log.py), where one range costs O(log n) lookups.

Each range the algorithms ask for starts at a multiple of a power of two at least as large as the
range (RFC 9162 splits at the largest power of two smaller than the size), so it is the left-to-right
sequence of the perfect subtrees `perfect_blocks` lists, folded from the right (`fold_blocks`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"  # RFC 9162 §2.1.1: MTH({d(0)}) = HASH(0x00 || d(0))
NODE_PREFIX = b"\x01"  # RFC 9162 §2.1.1: MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162 §2.1.1: the hash of an empty list

RangeHash = Callable[[int, int], bytes]
"""MTH(D[start:end]) for 0 <= start < end."""

BlockHash = Callable[[int, int], bytes]
"""The hash of the perfect subtree at (level, index): leaves [index * 2**level, (index + 1) * 2**level)."""


class ProofError(ValueError):
    """A proof was asked for sizes or indexes the tree does not have."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """k, the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_blocks(start: int, end: int) -> list[tuple[int, int]]:
    """The perfect subtrees (level, index) that cover [start, end), left to right, each as large as
    its alignment allows. For the ranges RFC 9162 uses, their right fold is MTH(D[start:end])."""
    blocks: list[tuple[int, int]] = []
    position = start
    while position < end:
        level = (end - position).bit_length() - 1
        while position % (1 << level):
            level -= 1
        blocks.append((level, position >> level))
        position += 1 << level
    return blocks


def fold_blocks(hashes: Sequence[bytes]) -> bytes:
    """Combine perfect subtrees listed left to right, largest first, into their tree's root."""
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = node_hash(left, root)
    return root


def range_hash_from_blocks(block_hash: BlockHash) -> RangeHash:
    def range_hash(start: int, end: int) -> bytes:
        return fold_blocks([block_hash(level, index) for level, index in perfect_blocks(start, end)])

    return range_hash


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 9162 §2.1.1), for any number of leaves, in one pass."""
    frontier = Frontier()
    for leaf in leaf_hashes:
        frontier.append(leaf)
    return frontier.root()


class Frontier:
    """The compact range of a tree: the roots of the perfect subtrees its size decomposes into (at most
    log2 n hashes). Appending a leaf returns the new complete subtrees (level >= 1, index, hash),
    which is what a log stores to answer proofs later."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} frontier hashes, not {len(hashes)}")
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        completed: list[tuple[int, int, bytes]] = []
        index, current, level = self.size, leaf, 0
        while index & 1:
            current = node_hash(self.hashes.pop(), current)
            level += 1
            index >>= 1
            completed.append((level, index, current))
        self.hashes.append(current)
        self.size += 1
        return completed

    def root(self) -> bytes:
        return fold_blocks(self.hashes)


class ListTree:
    """Range hashes over leaf hashes held in memory, each perfect subtree computed once."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self._levels: list[list[bytes]] = [list(leaf_hashes)]
        while len(self._levels[-1]) > 1:
            below = self._levels[-1]
            self._levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def block(self, level: int, index: int) -> bytes:
        return self._levels[level][index]

    def range_hash(self, start: int, end: int) -> bytes:
        return range_hash_from_blocks(self.block)(start, end)

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        return self.range_hash(0, size) if size else EMPTY_ROOT


def inclusion_proof(index: int, size: int, range_hash: RangeHash) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1, leaf-side first."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index - start < k:
            path.append(range_hash(start + k, end))
            end = start + k
        else:
            path.append(range_hash(start, start + k))
            start += k
    path.reverse()
    return path


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does `leaf` (a leaf hash) sit at `index` of the tree of `size` with `root`?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency_proof(old_size: int, new_size: int, range_hash: RangeHash) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 §2.1.4.1 for 0 < m <= n (empty when m == n)."""
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency proof from {old_size} to {new_size}")
    proof: list[bytes] = []
    m, start, end, whole = old_size, 0, new_size, True
    while m != end:
        k = split_point(end - start)
        if m - start <= k:
            proof.append(range_hash(start + k, end))
            end = start + k
        else:
            proof.append(range_hash(start, start + k))
            start += k
            whole = False
    if not whole:
        proof.append(range_hash(start, end))
    proof.reverse()
    return proof


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: is the tree of `new_size` with `new_root` an append-only extension of the
    tree of `old_size` with `old_root`?"""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
