"""How digits*.npz were made (run once; needs scikit-learn, which nothing else here needs).

The 8x8 handwritten digits (1797 samples, 64 features, 10 classes) as scikit-learn ships them,
pixels scaled from 0..16 to [0, 1], labels as int64. A fixed split (seed 0): 1437 training samples,
360 test samples.
"""

import numpy as np
from sklearn.datasets import load_digits

digits = load_digits()
x = (digits.data / 16.0).astype(np.float64)
label = digits.target.astype(np.int64)
order = np.random.default_rng(0).permutation(len(x))
test, train = order[:360], order[360:]
np.savez_compressed("digits.npz", x=x, label=label)
np.savez_compressed("digits_train.npz", x=x[train], label=label[train])
np.savez_compressed("digits_test.npz", x=x[test], label=label[test])
