"""Block sizes of the Triton kernels on a GPU, and the predicates that pick a kernel path for a size.

Plain Python (no Triton import): the ops read them to launch, the first-use check to name a path, and the cost
model (bench/kernel_model) to describe the same launches the ops make.
"""

from __future__ import annotations

NPIV = 16  # pivots per pass of a 16-way bisection: a 16-fold narrowing of the key range
SELECT_WARPS = 4  # warps per row of the pruned selection: its many row reductions stay within a warp (shuffles)
L2_BUDGET = 24 << 20  # bytes of W_dec columns one decode chunk may keep in L2 (an H100 has 50 MB in two halves)


def p2(x: int) -> int:
    """The power of two at or above max(x, 1)."""
    return 1 << (max(int(x), 1) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def select_blocks(n: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_N, num_warps) of the bisection and compaction kernels on a GPU."""
    return 2, min(p2(n), 512), 4


def dense_blocks(d: int) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_D) of the gather kernels on a GPU."""
    return 16, min(p2(d), 128)


def decode_sse_blocks(width: int, d: int, dtype_bytes: int = 2) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_D) of the fused decode + squared error: a [BLOCK_B, width, BLOCK_D] tile of gathered
    rows held in registers (about 8192 values for 4 warps in 16-bit, 4096 in fp32: no spills on sm_90)."""
    w = p2(width)
    bd = min(p2(d), 64)
    budget = 8192 if dtype_bytes <= 2 else 4096
    return max(1, min(16, budget // (w * bd))), bd


def decode_chunk(n: int, d: int, dtype_bytes: int, block_d: int, uses: int, budget: int = L2_BUDGET) -> int:
    """Columns of W_dec [n, d] per chunk of the fused decode: all of d when W_dec fits in `budget` or the batch
    reads its rows fewer than twice on average (`uses` = B * width gathered rows: chunking would only re-read
    the code), else the largest power-of-two multiple of block_d whose n rows fit (at least block_d). Each W
    element is then read from DRAM about once, however often the batch uses its row."""
    if n * d * dtype_bytes <= budget or uses < 2 * n:
        return d
    chunk = block_d
    while n * 2 * chunk * dtype_bytes <= budget and 2 * chunk < d:
        chunk *= 2
    return chunk


def grad_blocks(d: int) -> tuple[int, int, int]:
    """(BLOCK_L latents, BLOCK_P pairs per step, BLOCK_D) of the latent-sorted weight-gradient kernel."""
    return 32, 32, min(p2(d), 128)


def gemm_blocks(d: int, n: int, dtype, interpret: bool = False) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) of the fused encoder matmul. On sm_90 a
    128 x 128 tile over 8 warps compiles to wgmma (HGMMA) with 3 shared-memory stages and no spills; the
    interpreter takes large tiles (its cost is per program)."""
    if interpret:
        return 64, 128, 32, 8, 4, 1
    if str(dtype).endswith("float32"):
        return 64, 128, 32, 8, 8, 3
    return 128, 128, 64, 8, 8, 3


def submax_width(n: int, k: int) -> int:
    """Columns per sub-block of the maxima that prune the selection: about sqrt(n / 2k), so the row's maxima
    (n / SUB) and the candidate sub-blocks' entries (2k * SUB) are of one size; a power of two in [16, 128]
    (16 bf16 values fill one 32-byte sector), dividing the matmul's column tile."""
    target = max(1.0, (n / (2 * k)) ** 0.5)
    sub = 1 << max(0, int(target).bit_length() - 1)  # the power of two at or below
    return max(16, min(128, sub))


def tile_select_caps(k: int) -> tuple[int, int, int]:
    """What a row may keep before it falls back: 8k maxima at or above the first, cheap bound (about k ln(n /
    SUB / k) of them), 2k sub-blocks at or above t (k, plus ties among the maxima), 4k entries at or above t
    (about k)."""
    return p2(8 * k), p2(2 * k), p2(4 * k)


def tile_select_fits(n: int, k: int) -> bool:
    """The row rules' selection from sub-block maxima runs when a row has several times more sub-blocks than it
    keeps and its buffers stay small enough for registers (at most 4096 maxima and 4096 candidate entries per
    row); otherwise the bisection serves."""
    sub = submax_width(n, k)
    tcap = tile_select_caps(k)[1]
    return n >= 4 * tcap * sub and cdiv(n, sub) <= 4096 and tcap * sub <= 4096


def batch_prune_fits(n: int, k: int) -> bool:
    """BatchTopK's pruned selection runs when a row holds at least 4k sub-blocks: the maxima are then a small
    fraction of the entries, and the listed sub-blocks (about k per row) fewer still."""
    return cdiv(n, submax_width(n, k)) >= 4 * k


def batch_passes(shift: int) -> int:
    """Passes of a 16-way bisection over ReLU'd order keys (31 - shift bits: 4 for bf16, 5 fp16, 8 fp32)."""
    return -(-(31 - shift) // 4)


def batch_caps(total: int) -> tuple[int, int]:
    """(sub-blocks, entries) the pruned BatchTopK lists before it falls back: each is about total = k*B (plus ties
    at the bound), so twice and four times that, plus slack for small batches."""
    return 2 * total + 1024, 4 * total + 1024


def batch_blocks(sub: int) -> tuple[int, int, int, int]:
    """Block sizes of the pruned BatchTopK: keys per program of a counting pass and of the sub-block listing
    (large: each program first replays the bisection), sub-blocks per program of the entry listing (2048
    entries), candidates per step of the per-row write, keys per program (or step) of the per-row counts and
    of the budget (1024: 4096 spills there)."""
    return 4096, max(1, 2048 // sub), 64, 1024
