"""Names of the records and keys exchanged between the ServerApp and ClientApp.

One message type per round (``train``). Server → client: ArrayRecord ``arrays``
with ``w`` (d,) and, only when clients run local steps and P changed, ``P``
(d, d); ConfigRecord ``config`` with the protocol below. Client → server:
ArrayRecord ``arrays`` with ``probes`` (levels, k, d) and ``update`` (d,), and
MetricRecord ``metrics`` with the counts below — nothing else (see the audit
test).
"""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# server → client arrays
WEIGHTS = "w"
PRECONDITIONER = "P"

# server → client config
MODE = "mode"  # what the client computes: MODE_GRADCOV (default) or MODE_LOCAL
MODE_GRADCOV = "gradcov"  # probes + training gradient/update (GradCovStrategy)
MODE_LOCAL = "local"  # FedAvg-style local training, new weights back (Flower's strategies)
MODE_FEDNL = "fednl"  # FedNL's compressed Hessian learning (server.fednl, client.fednl)
FEDNL_COMPRESSOR = "fednl-compressor"  # "rank" or "topk"
FEDNL_LEVEL = "fednl-level"  # R or K
FEDNL_ALPHA = "fednl-alpha"  # Hessian learning rate
SEND_HESSIAN = "send-hessian"  # the Newton baseline asks for XᵀX/N once
ROUND = "server-round"
BATCH_SIZE = "batch-size"
PROBES = "probes"
NOISE_LEVELS = "noise-levels"
NATURAL_VAR = "noise-var"
LABEL_CLIP = "label-clip"  # B > 0 clips probe targets to [−B, B]; 0 = none
TRAIN_GRADIENT = "train-gradient"
NOISY_TARGETS = "noisy-targets"
LOCAL_STEPS = "local-steps"
LOCAL_LR = "local-lr"

# client → server arrays
PROBE_GRADS = "probes"
UPDATE = "update"
HESSIAN = "hessian"  # only when SEND_HESSIAN is set: the Newton baseline, not GradCov
FEDNL_PREFIX = "fednl-c-"  # FedNL's compressed correction: fednl-c-values + -vectors (rank) or -index + -values (topk)
FEDNL_SHIFTED = "fednl-shifted"  # g_i = (H_i + l_i·I)·w − ∇f_i(w), (d,)
FEDNL_DISTANCE = "fednl-distance"  # l_i = ‖H_i − ∇²f_i‖_F, (1,)

# client → server counts
PARTITION_ID = "partition-id"
NUM_EXAMPLES = "num-examples"  # rows behind the training contribution (Flower's weighting key)
LOCAL_ROWS = "local-rows"  # N, for the finite-population factor
# added by the node's policy (client/policy.py) to training replies: label μ-GDP
MU_PROBE = "mu-probe"  # μ of this round's least-noisy probe (0 without probes)
MU_SPENT = "mu-spent"  # μ of everything the node released in this run so far, √Σμ²
NOISE_SECRET = "noise-secret"  # 1: the node seeds its noise with a secret, so μ holds against the server too

REPLY_ARRAYS = frozenset({PROBE_GRADS, UPDATE})
REPLY_COUNTS = frozenset({PARTITION_ID, NUM_EXAMPLES, LOCAL_ROWS})
REPLY_PRIVACY = frozenset({MU_PROBE, MU_SPENT, NOISE_SECRET})

# the start-up handshake (query.hello): which partition a node serves
HELLO = "hello"
