"""RFC 9162 Merkle hashing and proofs: the published Certificate Transparency vectors, and properties
over trees of every shape (sizes that are not powers of two included)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    ListTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    perfect_blocks,
    root_of,
    split_point,
    verify_consistency,
    verify_inclusion,
)

# The test vectors of the Certificate Transparency reference implementations (RFC 6962 hashing,
# unchanged in RFC 9162).
CT_ENTRIES = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
CT_LEAVES = [leaf_hash(e) for e in CT_ENTRIES]


def rfc_mth(entries: list[bytes]) -> bytes:
    """MTH exactly as RFC 9162 §2.1.1 writes it, recursively: the reference the fast paths must equal."""
    if not entries:
        return hashlib.sha256(b"").digest()
    if len(entries) == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = split_point(len(entries))
    return hashlib.sha256(b"\x01" + rfc_mth(entries[:k]) + rfc_mth(entries[k:])).digest()


def flip(value: bytes, bit: int) -> bytes:
    bit %= len(value) * 8
    data = bytearray(value)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def test_roots_are_the_published_ct_vectors() -> None:
    assert root_of([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    for size in range(1, 9):
        assert root_of(CT_LEAVES[:size]).hex() == CT_ROOTS[size - 1]
        assert ListTree(CT_LEAVES[:size]).root().hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "expected"), CT_INCLUSION)
def test_inclusion_proofs_are_the_published_ct_vectors(index: int, size: int, expected: list[str]) -> None:
    tree = ListTree(CT_LEAVES[:size])
    proof = inclusion_proof(index, size, tree.range_hash)
    assert [p.hex() for p in proof] == expected
    assert verify_inclusion(index, size, CT_LEAVES[index], proof, bytes.fromhex(CT_ROOTS[size - 1]))


def test_split_is_the_largest_power_of_two_below_n() -> None:
    assert [split_point(n) for n in range(2, 10)] == [1, 2, 2, 4, 4, 4, 4, 8]


def test_perfect_blocks_cover_the_range_with_aligned_subtrees() -> None:
    assert perfect_blocks(0, 13) == [(3, 0), (2, 2), (0, 12)]
    assert perfect_blocks(8, 13) == [(2, 2), (0, 12)]
    assert perfect_blocks(12, 16) == [(2, 3)]


def test_proofs_for_missing_leaves_or_sizes_are_refused() -> None:
    tree = ListTree(CT_LEAVES)
    with pytest.raises(ProofError):
        inclusion_proof(8, 8, tree.range_hash)
    with pytest.raises(ProofError):
        consistency_proof(0, 8, tree.range_hash)
    with pytest.raises(ProofError):
        consistency_proof(5, 4, tree.range_hash)


entries = st.lists(st.binary(max_size=12), min_size=1, max_size=70)


@given(entries)
@settings(max_examples=150)
def test_every_way_of_computing_the_root_equals_the_rfc_definition(data: list[bytes]) -> None:
    leaves = [leaf_hash(d) for d in data]
    expected = rfc_mth(data)
    frontier = Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    assert frontier.root() == root_of(leaves) == ListTree(leaves).root() == expected
    assert Frontier(frontier.size, frontier.hashes).root() == expected


@given(entries)
@settings(max_examples=150)
def test_the_subtrees_a_frontier_completes_are_the_trees_nodes(data: list[bytes]) -> None:
    leaves = [leaf_hash(d) for d in data]
    tree = ListTree(leaves)
    frontier = Frontier()
    seen = set()
    for leaf in leaves:
        for level, index, value in frontier.append(leaf):
            assert value == tree.block(level, index)
            seen.add((level, index))
    assert len(seen) == len(leaves) - len(leaves).bit_count()  # every complete interior node, once


@given(entries, st.data())
@settings(max_examples=200)
def test_every_leafs_inclusion_proof_verifies_and_any_flipped_bit_fails(data: list[bytes], draw: st.DataObject) -> None:
    leaves = [leaf_hash(d) for d in data]
    tree = ListTree(leaves)
    size = len(leaves)
    root = tree.root()
    for index, leaf in enumerate(leaves):
        proof = inclusion_proof(index, size, tree.range_hash)
        assert verify_inclusion(index, size, leaf, proof, root)
    index = draw.draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, size, tree.range_hash)
    bit = draw.draw(st.integers(0, 255))
    assert not verify_inclusion(index, size, flip(leaves[index], bit), proof, root)
    assert not verify_inclusion(index, size, leaves[index], proof, flip(root, bit))
    if proof:
        which = draw.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:which], flip(proof[which], bit), *proof[which + 1 :]]
        assert not verify_inclusion(index, size, leaves[index], bad, root)
        assert not verify_inclusion(index, size, leaves[index], proof[:-1], root)
        assert not verify_inclusion(index, size, leaves[index], [*proof, proof[0]], root)
    if size > 1:
        other = (index + 1) % size
        assert not verify_inclusion(other, size, leaves[index], proof, root) or leaves[other] == leaves[index]


@given(entries, st.data())
@settings(max_examples=200)
def test_consistency_between_any_two_sizes_verifies_and_any_flipped_bit_fails(
    data: list[bytes], draw: st.DataObject
) -> None:
    leaves = [leaf_hash(d) for d in data]
    tree = ListTree(leaves)
    n = draw.draw(st.integers(1, len(leaves)))
    m = draw.draw(st.integers(1, n))
    old_root, new_root = tree.root(m), tree.root(n)
    proof = consistency_proof(m, n, tree.range_hash)
    assert verify_consistency(m, n, old_root, new_root, proof)
    bit = draw.draw(st.integers(0, 255))
    assert not verify_consistency(m, n, flip(old_root, bit), new_root, proof)
    assert not verify_consistency(m, n, old_root, flip(new_root, bit), proof)
    if proof:
        which = draw.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:which], flip(proof[which], bit), *proof[which + 1 :]]
        assert not verify_consistency(m, n, old_root, new_root, bad)
        assert not verify_consistency(m, n, old_root, new_root, proof[:-1])


@given(entries, st.data())
@settings(max_examples=100)
def test_a_changed_leaf_breaks_consistency_with_the_old_head(data: list[bytes], draw: st.DataObject) -> None:
    leaves = [leaf_hash(d) for d in data]
    n = draw.draw(st.integers(1, len(leaves)))
    m = draw.draw(st.integers(1, n))
    old_root = ListTree(leaves).root(m)
    changed = list(leaves)
    at = draw.draw(st.integers(0, m - 1))
    changed[at] = flip(changed[at], draw.draw(st.integers(0, 255)))
    rewritten = ListTree(changed)
    proof = consistency_proof(m, n, rewritten.range_hash)
    assert not verify_consistency(m, n, old_root, rewritten.root(n), proof)


def test_node_hash_is_ordered() -> None:
    a, b = CT_LEAVES[0], CT_LEAVES[1]
    assert node_hash(a, b) != node_hash(b, a)
    assert node_hash(a, b).hex() == CT_ROOTS[1]
