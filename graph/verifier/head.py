"""The learned part: standardised features -> logistic regression -> P(accepted). Plain numpy at inference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


@dataclass(frozen=True)
class LinearHead:
    """Logistic regression over standardised features (what grouped CV chose; see the model card)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        if features.shape[1] != self.coef.shape[0]:
            raise ValueError(f"head expects {self.coef.shape[0]} features, got {features.shape[1]}")
        z = ((features - self.mean) / self.scale) @ self.coef + self.intercept
        return sigmoid(z)

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
            "coef": self.coef.astype(np.float32),
            "intercept": np.array([self.intercept], dtype=np.float32),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> LinearHead:
        return cls(
            mean=tensors["mean"].astype(np.float64),
            scale=tensors["scale"].astype(np.float64),
            coef=tensors["coef"].astype(np.float64),
            intercept=float(tensors["intercept"][0]),
        )


def fit_linear_head(features: np.ndarray, labels: np.ndarray, c: float, seed: int = 0) -> LinearHead:
    """L2-regularised logistic regression on standardised features (scikit-learn, training only)."""
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-8] = 1.0
    model = LogisticRegression(C=c, max_iter=3000, random_state=seed)
    model.fit((features - mean) / scale, labels)
    return LinearHead(mean=mean, scale=scale, coef=model.coef_[0].copy(), intercept=float(model.intercept_[0]))
