"""Train the example model: a logistic regression on scikit-learn's bundled iris data set.

Writes model.joblib and validation.csv next to this script. Deterministic for a
given scikit-learn version (fixed split and solver seed), so re-running it with
the versions in requirements.txt reproduces the committed files' digests.

    pip install -r requirements.txt && python train.py
    model-integrity init --model model.joblib --artifact validation.csv \
        --artifact requirements.txt --artifact train.py --force
"""

from __future__ import annotations

from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent


def main() -> None:
    data = load_iris(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    features = frame.drop(columns="target")
    train_x, valid_x, train_y, valid_y = train_test_split(
        features, frame["target"], test_size=0.3, random_state=0, stratify=frame["target"]
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    model.fit(train_x, train_y)
    joblib.dump(model, HERE / "model.joblib")
    validation = valid_x.assign(target=valid_y).sort_index()
    validation.to_csv(HERE / "validation.csv", index=False, float_format="%.1f")
    accuracy = model.score(validation.drop(columns="target"), validation["target"])
    print(f"validation accuracy {accuracy:.4f} on {len(validation)} rows")


if __name__ == "__main__":
    main()
