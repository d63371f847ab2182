"""An embedded stand-in for the Ames Housing data set, so the example runs with no download.

``make_houses`` draws houses whose columns carry the real ``AmesHousing.csv`` names and dtypes
(a useful subset of its 82 columns, spaces and all, as in ``Overall Cond``), with missing
values where the real file has them and a ``SalePrice`` that depends on the features the way
prices do in Ames: quality, living area, age, neighbourhood. The same pipeline code therefore
runs on this and on the real file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "make_houses"]

# (name, frequency weight, effect on log price, typical year built): taken loosely from the
# real file's neighbourhood counts and median prices.
_NEIGHBORHOODS = (
    ("NAmes", 443, -0.10, 1960),
    ("CollgCr", 267, 0.08, 1995),
    ("OldTown", 239, -0.22, 1920),
    ("Edwards", 194, -0.18, 1955),
    ("Somerst", 182, 0.15, 2003),
    ("NridgHt", 166, 0.35, 2005),
    ("Gilbert", 165, 0.02, 1998),
    ("Sawyer", 151, -0.12, 1965),
    ("NWAmes", 131, 0.00, 1975),
    ("SawyerW", 125, 0.00, 1990),
    ("Mitchel", 114, -0.05, 1975),
    ("BrkSide", 108, -0.20, 1930),
    ("Crawfor", 103, 0.10, 1940),
    ("IDOTRR", 93, -0.30, 1925),
    ("Timber", 72, 0.20, 2000),
    ("NoRidge", 71, 0.35, 1995),
    ("StoneBr", 51, 0.40, 2000),
    ("MeadowV", 37, -0.40, 1972),
)
_HOUSE_STYLES = (("1Story", 1481), ("2Story", 873), ("1.5Fin", 314), ("SLvl", 128), ("SFoyer", 83))
_KITCHEN_EFFECT = {"Ex": 0.10, "Gd": 0.04, "TA": 0.0, "Fa": -0.08}

#: the columns ``make_houses`` returns, in the real file's order
COLUMNS = (
    "Order",
    "PID",
    "LotFrontage",
    "LotArea",
    "Neighborhood",
    "HouseStyle",
    "OverallQual",
    "Overall Cond",
    "YearBuilt",
    "YearRemodAdd",
    "MasVnrArea",
    "TotalBsmtSF",
    "CentralAir",
    "GrLivArea",
    "FullBath",
    "HalfBath",
    "BedroomAbvGr",
    "KitchenQual",
    "TotRmsAbvGrd",
    "Fireplaces",
    "GarageCars",
    "GarageArea",
    "SalePrice",
)


def make_houses(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """``n`` synthetic Ames houses, the same for the same ``seed``."""
    if n < 1:
        raise ValueError(f"make_houses needs n >= 1, got {n}")
    rng = np.random.default_rng(seed)

    names, weights, effects, eras = zip(*_NEIGHBORHOODS, strict=True)
    hood_idx = rng.choice(len(names), size=n, p=np.array(weights) / sum(weights))
    hood_effect = np.array(effects)[hood_idx]
    year_built = np.clip(np.round(rng.normal(np.array(eras)[hood_idx], 12)), 1872, 2010)
    year_built = year_built.astype(np.int64)
    # Newer houses in better neighbourhoods are of better quality, as in the real data.
    qual_mean = 5.9 + 0.025 * (year_built - 1960) + 3.0 * hood_effect
    overall_qual = np.clip(np.round(rng.normal(qual_mean, 1.0)), 1, 10).astype(np.int64)
    overall_cond = np.clip(np.round(rng.normal(5.6, 1.0, n)), 1, 9).astype(np.int64)
    remodelled = rng.random(n) < 0.45
    remod_year = np.minimum(2010, year_built + rng.integers(0, 60, size=n))
    year_remod = np.where(remodelled, np.maximum(remod_year, 1950), np.maximum(year_built, 1950))

    style_names, style_weights = zip(*_HOUSE_STYLES, strict=True)
    style_idx = rng.choice(len(style_names), size=n, p=np.array(style_weights) / sum(style_weights))
    house_style = np.array(style_names, dtype=object)[style_idx]
    storeys = np.where(house_style == "2Story", 1.45, np.where(house_style == "1.5Fin", 1.25, 1.0))

    quality_size = 1 + 0.06 * (overall_qual - 6)
    gr_liv_area = rng.lognormal(np.log(1200), 0.22, size=n) * storeys * quality_size
    gr_liv_area = np.clip(np.round(gr_liv_area), 334, 5642).astype(np.int64)
    has_basement = rng.random(n) > 0.03
    first_floor = gr_liv_area / storeys
    total_bsmt = np.where(has_basement, np.round(first_floor * rng.uniform(0.7, 1.2, n)), 0.0)
    lot_area = np.round(rng.lognormal(np.log(9400), 0.35, size=n)).astype(np.int64)
    lot_frontage = np.round(np.sqrt(lot_area) * rng.uniform(0.55, 0.85, n))
    mas_vnr = np.where(rng.random(n) < 0.6, 0.0, np.round(rng.lognormal(np.log(150), 0.6, n)))

    full_bath = np.clip(np.round(gr_liv_area / 900 + rng.normal(0, 0.3, n)), 1, 4).astype(np.int64)
    half_bath = (rng.random(n) < np.where(storeys > 1, 0.6, 0.25)).astype(np.int64)
    bedrooms = np.clip(np.round(gr_liv_area / 500 + rng.normal(0, 0.5, n)), 1, 8).astype(np.int64)
    tot_rooms = np.clip(bedrooms + full_bath + 1 + rng.integers(0, 3, n), 2, 15).astype(np.int64)
    fireplaces = rng.choice(3, size=n, p=[0.48, 0.43, 0.09]).astype(np.int64)
    garage_cars = np.clip(np.round(rng.normal(0.4 + 0.25 * overall_qual, 0.6)), 0, 4)
    garage_area = np.where(garage_cars > 0, np.round(garage_cars * 240 + rng.normal(0, 40, n)), 0.0)
    kitchen_qual = np.select(
        [overall_qual >= 9, overall_qual >= 7, overall_qual >= 4], ["Ex", "Gd", "TA"], "Fa"
    ).astype(object)
    central_air = np.where((year_built < 1950) & (rng.random(n) < 0.35), "N", "Y").astype(object)

    log_price = (
        12.0
        + 0.09 * (overall_qual - 6)
        + 0.03 * (overall_cond - 5)
        + 0.45 * np.log(gr_liv_area / 1500)
        + 0.08 * np.log(lot_area / 9400)
        + 0.0025 * (year_built - 1970)
        + 0.001 * (year_remod - 1985)
        + 0.10 * (total_bsmt / 1000 - 1)
        + 0.04 * (garage_cars - 2)
        + 0.03 * fireplaces
        + hood_effect
        + np.vectorize(_KITCHEN_EFFECT.__getitem__)(kitchen_qual)
        - 0.08 * (central_air == "N")
        + rng.normal(0, 0.09, n)
    )
    sale_price = np.round(np.exp(log_price) / 100) * 100

    frame = pd.DataFrame(
        {
            "Order": np.arange(1, n + 1, dtype=np.int64),
            "PID": rng.integers(526_301_100, 1_007_100_110, size=n, dtype=np.int64),
            "LotFrontage": lot_frontage,
            "LotArea": lot_area,
            "Neighborhood": np.array(names, dtype=object)[hood_idx],
            "HouseStyle": house_style,
            "OverallQual": overall_qual,
            "Overall Cond": overall_cond,
            "YearBuilt": year_built,
            "YearRemodAdd": year_remod.astype(np.int64),
            "MasVnrArea": mas_vnr,
            "TotalBsmtSF": total_bsmt,
            "CentralAir": central_air,
            "GrLivArea": gr_liv_area,
            "FullBath": full_bath,
            "HalfBath": half_bath,
            "BedroomAbvGr": bedrooms,
            "KitchenQual": kitchen_qual,
            "TotRmsAbvGrd": tot_rooms,
            "Fireplaces": fireplaces,
            "GarageCars": garage_cars,
            "GarageArea": garage_area,
            "SalePrice": sale_price.astype(np.int64),
        },
        columns=list(COLUMNS),
    )
    # Missing values where the real file has them: LotFrontage often (17%), MasVnrArea rarely,
    # and the odd basement or garage measurement.
    frame.loc[rng.random(n) < 0.17, "LotFrontage"] = np.nan
    frame.loc[rng.random(n) < 0.01, "MasVnrArea"] = np.nan
    frame.loc[rng.random(n) < 0.002, ["TotalBsmtSF"]] = np.nan
    frame.loc[rng.random(n) < 0.002, ["GarageCars", "GarageArea"]] = np.nan
    # The real file reads its text columns as pandas' string dtype; match it.
    for column in ("Neighborhood", "HouseStyle", "CentralAir", "KitchenQual"):
        frame[column] = frame[column].astype("str")
    return frame
