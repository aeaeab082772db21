"""EinHops' benchmark einsums and shapes (the CKKS acceptance set), shared by the tests and the benchmark."""

EINHOPS_CASES = [
    ("transpose", "ij->ji", [(128, 128)]),
    ("sum", "ij->", [(128, 128)]),
    ("column sum", "ij->j", [(128, 128)]),
    ("row sum", "ij->i", [(128, 128)]),
    ("matrix-vector", "ik,k->i", [(128, 128), (128,)]),
    ("matrix-matrix", "ik,kj->ij", [(16, 32), (32, 32)]),
    ("dot product", "i,i->", [(16384,), (16384,)]),
    ("inner product", "ij,ij->", [(128, 128), (128, 128)]),
    ("hadamard", "ij,ij->ij", [(128, 128), (128, 128)]),
    ("outer product", "i,j->ij", [(128,), (128,)]),
    ("batched matmul", "ijk,ikl->ijl", [(16, 8, 8), (16, 8, 8)]),
    ("three-way hadamard", "ij,ij,ij->ij", [(128, 128)] * 3),
    ("chained matmul", "ij,jk,kl->il", [(16, 8), (8, 8), (8, 16)]),
    ("bilinear", "ik,jkl,il->ij", [(8, 16), (8, 16, 16), (8, 16)]),
    ("4-d contraction", "pqrs,tuqvr->pstuv", [(2, 4, 8, 8), (1, 4, 4, 2, 8)]),
]
ATTENTION = ("attention scores", "bthd,bThd->bhtT", [(2, 5, 8, 16), (2, 5, 8, 16)])
