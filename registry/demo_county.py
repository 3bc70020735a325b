"""Demo data for Wushen Banner (乌审旗): towns, the programme's communities, households and their kits.

Town codes are the real 12-digit statistical division codes (NBS 统计用区划代码, 2022; domain §6.1).
Everything below town level is made up and marked so: community codes are synthetic (town code + 001..,
the range residents' committees use) with ``community.synthetic = true``, and residents' names and mobile
numbers are random, deterministic from the seed. The numbers have a valid format and may belong to real
people, so never point a real SMS provider at demo data. Device models are labelled as demo models.

The mix follows the programme (domain §0, §6.3): NG households get an alarm, an electric shut-off valve
(linked to the alarm), a self-closing valve and a corrugated hose; LPG households get a self-closing
regulator and a metal-clad hose and nothing networked. Most NG households are in the seat 嘎鲁图镇; LPG
households are mostly in the sumu and rural towns.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg

_LOGGER = logging.getLogger(__name__)

MAX_HOUSEHOLDS = 999_999  # device ids carry six digits

NG_SUPPLIER = "乌审中燃"
LPG_SUPPLIERS = ("荣昌液化石油气供应站", "正源液化石油气充装储备有限责任公司")

# Device catalogue ids of the demo models.
MODEL_NG_ALARM = "demo-ng-alarm"
MODEL_NG_SHUTOFF_VALVE = "demo-ng-shutoff-valve"
MODEL_NG_SELF_CLOSING_VALVE = "demo-ng-self-closing-valve"
MODEL_NG_HOSE = "demo-ng-hose"
MODEL_LPG_REGULATOR = "demo-lpg-regulator"
MODEL_LPG_HOSE = "demo-lpg-hose"


@dataclass(frozen=True, slots=True)
class DemoTown:
    """A town (镇/苏木) with its real statistical code."""

    code: str
    name: str


@dataclass(frozen=True, slots=True)
class DemoCommunity:
    """A programme community with its synthetic code and how many households were seeded in it."""

    code: str
    town_code: str
    name: str
    ng_households: int
    lpg_households: int


@dataclass(frozen=True, slots=True)
class DemoCounty:
    """What `seed_demo_county` wrote."""

    seed: int
    households: int
    ng_households: int
    lpg_households: int
    devices: int
    alarm_valve_links: int
    towns: tuple[DemoTown, ...]
    communities: tuple[DemoCommunity, ...]


TOWNS: tuple[DemoTown, ...] = (
    DemoTown("150626100000", "嘎鲁图镇"),
    DemoTown("150626101000", "乌审召镇"),
    DemoTown("150626102000", "图克镇"),
    DemoTown("150626103000", "乌兰陶勒盖镇"),
    DemoTown("150626104000", "无定河镇"),
    DemoTown("150626200000", "苏力德苏木"),
    # A 政企合一 unit with no community in the programme; listed so its code is known (and not confused
    # with the 苏里格 community of 嘎鲁图镇).
    DemoTown("150626410000", "苏里格经济开发区"),
)


@dataclass(frozen=True, slots=True)
class _CommunityPlan:
    town_code: str
    name: str
    ng_weight: float
    lpg_weight: float


# The programme's 18 communities, in rollout order per town. Weights are relative shares of NG and LPG
# households: the seat takes about 78% of NG households and 15% of LPG ones.
_COMMUNITIES: tuple[_CommunityPlan, ...] = (
    _CommunityPlan("150626100000", "呼热胡", 8.7, 1.9),
    _CommunityPlan("150626100000", "独贵龙", 9.5, 1.9),
    _CommunityPlan("150626100000", "朝阳", 11.3, 1.9),
    _CommunityPlan("150626100000", "苏里格", 7.8, 1.9),
    _CommunityPlan("150626100000", "南丁", 8.7, 1.8),
    _CommunityPlan("150626100000", "巴音", 12.1, 1.9),
    _CommunityPlan("150626100000", "文苑", 10.4, 1.9),
    _CommunityPlan("150626100000", "萨拉乌素", 9.5, 1.9),
    _CommunityPlan("150626200000", "陶利", 1.6, 14.0),
    _CommunityPlan("150626200000", "沙尔利格", 1.6, 14.0),
    _CommunityPlan("150626104000", "河园", 2.7, 7.0),
    _CommunityPlan("150626104000", "河南", 2.7, 9.0),
    _CommunityPlan("150626103000", "查干塔拉", 2.1, 11.0),
    _CommunityPlan("150626102000", "吉美", 2.7, 7.0),
    _CommunityPlan("150626102000", "和美", 2.1, 7.0),
    _CommunityPlan("150626102000", "阿吉泰", 1.6, 9.0),
    _CommunityPlan("150626101000", "惠泽", 2.7, 9.0),
    _CommunityPlan("150626101000", "绿洲", 2.1, 9.0),
)

_SEAT = "150626100000"


def community_codes() -> list[tuple[str, str, str]]:
    """The synthetic ``(code, town_code, name)`` of every programme community, in a stable order."""
    codes: list[tuple[str, str, str]] = []
    per_town: dict[str, int] = {}
    for plan in _COMMUNITIES:
        number = per_town[plan.town_code] = per_town.get(plan.town_code, 0) + 1
        # 12-digit village-level code: town's 9 digits + 001..199 (residents' committees).
        codes.append((f"{plan.town_code[:9]}{number:03d}", plan.town_code, f"{plan.name}社区"))
    return codes


_DEVICE_MODELS: tuple[tuple[object, ...], ...] = (
    # id, manufacturer, model, kind, gas_type, low, high, heartbeat_s, close_confirm_timeout_s, life, bearer
    (
        MODEL_NG_ALARM,
        "演示安防科技 (demo)",
        "JT-NG10 家用甲烷报警器 (演示)",
        "alarm",
        "NG",
        10.0,
        25.0,
        3600,
        None,
        5,
        "mqtt",
    ),
    (
        MODEL_NG_SHUTOFF_VALVE,
        "演示安防科技 (demo)",
        "DN15 电动切断阀 (演示)",
        "shutoff_valve",
        "NG",
        None,
        None,
        3600,
        30,
        10,
        "mqtt",
    ),
    (
        MODEL_NG_SELF_CLOSING_VALVE,
        "演示燃气器具 (demo)",
        "ZB-2 管道燃气自闭阀 (演示)",
        "self_closing_valve",
        "NG",
        None,
        None,
        None,
        None,
        10,
        None,
    ),
    (
        MODEL_NG_HOSE,
        "演示燃气器具 (demo)",
        "BW-1000 不锈钢波纹软管 1m (演示)",
        "hose",
        "NG",
        None,
        None,
        None,
        None,
        8,
        None,
    ),
    (
        MODEL_LPG_REGULATOR,
        "演示燃气器具 (demo)",
        "YJ-30 自闭式液化气减压阀 (演示)",
        "regulator",
        "LPG",
        None,
        None,
        None,
        None,
        5,
        None,
    ),
    (
        MODEL_LPG_HOSE,
        "演示燃气器具 (demo)",
        "JB-1500 金属包覆软管 (演示)",
        "hose",
        "LPG",
        None,
        None,
        None,
        None,
        8,
        None,
    ),
)

# (model id, device id prefix) of each household's kit.
_NG_KIT: tuple[tuple[str, str], ...] = (
    (MODEL_NG_ALARM, "GA"),
    (MODEL_NG_SHUTOFF_VALVE, "GV"),
    (MODEL_NG_SELF_CLOSING_VALVE, "GS"),
    (MODEL_NG_HOSE, "GH"),
)
_LPG_KIT: tuple[tuple[str, str], ...] = ((MODEL_LPG_REGULATOR, "LR"), (MODEL_LPG_HOSE, "LH"))

_DEMO_TAC = "86790312"  # made-up type allocation code for demo IMEIs

_HAN_SURNAMES = (
    "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董程曹袁邓许沈曾彭吕苏卢蒋蔡贾丁魏薛叶余潘杜戴夏钟汪田任"
    "姜范方石姚谭廖邹熊金陆郝孔白崔康毛邱秦江史顾侯邵孟龙万段雷钱汤尹常武乔贺赖龚文奇"
)
_HAN_GIVEN = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红梅建国志文斌辉鹏宇浩凯婷雪琳晶燕慧鑫海波峰东亮林飞丹宁俊欣"
)
_MONGOLIAN_NAMES = (
    "巴特尔",
    "乌云",
    "其其格",
    "斯琴",
    "额尔敦",
    "苏和",
    "那仁",
    "阿拉坦",
    "乌日娜",
    "图雅",
    "萨仁",
    "格日勒",
    "朝鲁",
    "宝音",
    "巴雅尔",
    "呼和",
    "满都拉",
    "娜仁花",
    "敖登",
    "孟和",
    "哈斯",
    "特木尔",
    "阿古拉",
    "布和",
    "达来",
    "恩和",
    "高娃",
    "其木格",
    "乌力吉",
    "那顺",
    "额尔德尼",
    "萨仁高娃",
    "斯琴图雅",
)
# Mainland mobile number blocks (China Mobile, Unicom, Telecom).
_MOBILE_PREFIXES = (
    *(f"13{digit}" for digit in range(10)),
    *(f"15{digit}" for digit in (0, 1, 2, 3, 5, 6, 7, 8, 9)),
    *(f"18{digit}" for digit in (0, 1, 2, 3, 5, 6, 7, 8, 9)),
    "166",
    "177",
    "191",
    "198",
    "199",
)


@dataclass(frozen=True, slots=True)
class _Household:
    id: int
    community_code: str
    gas_type: str
    building: str
    unit: str
    room: str
    installed_on: date


async def seed_demo_county(
    conn: asyncpg.Connection, *, households: int, seed: int = 0, lpg_share: float = 0.1
) -> DemoCounty:
    """Write the demo county into an empty registry: places, the demo device catalogue, households, kits.

    Towns, communities and device models are inserted idempotently (``ON CONFLICT DO NOTHING``);
    households and devices are bulk-copied in one transaction. Everything random is drawn from ``seed``.

    Args:
        conn: a connection to a migrated database.
        households: how many households to create (NG and LPG together).
        seed: seed of every random choice (names, phones, dates, suppliers).
        lpg_share: fraction of the households that are LPG (regulator + hose, nothing networked).

    Raises:
        ValueError: on bad arguments, or when the registry already has households (seeding twice would
            mix two demo populations; start from an empty database instead).
    """
    if not 1 <= households <= MAX_HOUSEHOLDS:
        raise ValueError(f"households must be between 1 and {MAX_HOUSEHOLDS}, got {households}")
    if not 0.0 <= lpg_share <= 1.0:
        raise ValueError(f"lpg_share must be between 0 and 1, got {lpg_share}")
    lpg_total = round(households * lpg_share)
    ng_total = households - lpg_total
    codes = community_codes()
    ng_counts = _apportion(ng_total, [plan.ng_weight for plan in _COMMUNITIES])
    lpg_counts = _apportion(lpg_total, [plan.lpg_weight for plan in _COMMUNITIES])
    rng = random.Random(seed)

    async with conn.transaction():
        # Serialise concurrent seeders so that the emptiness check below stays true until we commit.
        await conn.execute("LOCK TABLE household IN SHARE ROW EXCLUSIVE MODE")
        existing = await conn.fetchval("SELECT count(*) FROM household")
        if existing:
            raise ValueError(
                f"the registry already has {existing} household(s); seed the demo county into an empty database"
            )
        await conn.executemany(
            "INSERT INTO town (code, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [(town.code, town.name) for town in TOWNS],
        )
        await conn.executemany(
            "INSERT INTO community (code, town_code, name, synthetic) VALUES ($1, $2, $3, true) ON CONFLICT DO NOTHING",
            codes,
        )
        await conn.executemany(
            """
            INSERT INTO device_model (id, manufacturer, model, kind, gas_type, low_alarm_lel, high_alarm_lel,
                                      heartbeat_s, close_confirm_timeout_s, service_life_years, bearer)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT DO NOTHING
            """,
            _DEVICE_MODELS,
        )
        # Reserve a block of ids from the identity sequence so that later inserts never collide. The
        # table lock keeps every other inserter (and so every other nextval) out until we commit.
        first_id = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('household', 'id'))")
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('household', 'id'), $1::bigint)", first_id + households - 1
        )
        ids = range(first_id, first_id + households)
        planned = _plan_households(ids, codes, ng_counts, lpg_counts)
        household_rows = _household_rows(planned, rng)
        device_rows, link_rows = _device_rows(planned, rng)
        await conn.copy_records_to_table(
            "household",
            records=household_rows,
            columns=(
                "id",
                "community_code",
                "building",
                "unit",
                "room",
                "gas_type",
                "supplier",
                "resident_name",
                "resident_phone",
            ),
        )
        await conn.copy_records_to_table(
            "device",
            records=device_rows,
            columns=("id", "household_id", "model_id", "serial", "imei", "manufactured_on", "installed_on"),
        )
        await conn.copy_records_to_table("alarm_valve_link", records=link_rows, columns=("alarm_id", "valve_id"))

    _LOGGER.info(
        "seeded demo county: %d households (%d NG, %d LPG), %d devices",
        households,
        ng_total,
        lpg_total,
        len(device_rows),
    )
    return DemoCounty(
        seed=seed,
        households=households,
        ng_households=ng_total,
        lpg_households=lpg_total,
        devices=len(device_rows),
        alarm_valve_links=len(link_rows),
        towns=TOWNS,
        communities=tuple(
            DemoCommunity(code=code, town_code=town_code, name=name, ng_households=ng, lpg_households=lpg)
            for (code, town_code, name), ng, lpg in zip(codes, ng_counts, lpg_counts, strict=True)
        ),
    )


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder, so the parts add up exactly)."""
    weight_sum = sum(weights)
    quotas = [total * weight / weight_sum for weight in weights]
    counts = [int(quota) for quota in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - quotas[i], i))
    for index in by_remainder[: total - sum(counts)]:
        counts[index] += 1
    return counts


def _plan_households(
    ids: Sequence[int], codes: Sequence[tuple[str, str, str]], ng_counts: Sequence[int], lpg_counts: Sequence[int]
) -> list[_Household]:
    planned: list[_Household] = []
    next_id = iter(ids)
    rollout_start = date(2024, 3, 1)
    for index, ((code, town_code, _name), ng, lpg) in enumerate(zip(codes, ng_counts, lpg_counts, strict=True)):
        # "分批实施": one community after another, two weeks apart, each over about six weeks.
        window_start = rollout_start + timedelta(days=14 * index)
        floors, units, doors = (6, 3, 2) if town_code == _SEAT else (6, 2, 2)
        per_unit = floors * doors
        for n in range(ng):
            building, rest = divmod(n, per_unit * units)
            unit, rest = divmod(rest, per_unit)
            floor, door = divmod(rest, doors)
            planned.append(
                _Household(
                    id=next(next_id),
                    community_code=code,
                    gas_type="NG",
                    building=f"{building + 1}号楼",
                    unit=f"{unit + 1}单元",
                    room=f"{floor + 1}{door + 1:02d}",
                    installed_on=window_start + timedelta(days=(n * 7919) % 42),
                )
            )
        for n in range(lpg):
            # LPG households live in single-storey houses (平房) in rows, away from the gas network.
            row, house = divmod(n, 12)
            planned.append(
                _Household(
                    id=next(next_id),
                    community_code=code,
                    gas_type="LPG",
                    building=f"{row + 1}排",
                    unit="平房",
                    room=f"{house + 1}号",
                    installed_on=window_start + timedelta(days=(n * 7919) % 42),
                )
            )
    return planned


def _household_rows(planned: Sequence[_Household], rng: random.Random) -> list[tuple[object, ...]]:
    phones: set[str] = set()
    rows: list[tuple[object, ...]] = []
    for hh in planned:
        supplier = NG_SUPPLIER if hh.gas_type == "NG" else rng.choice(LPG_SUPPLIERS)
        rows.append(
            (
                hh.id,
                hh.community_code,
                hh.building,
                hh.unit,
                hh.room,
                hh.gas_type,
                supplier,
                _resident_name(rng),
                _unique_phone(rng, phones),
            )
        )
    return rows


def _device_rows(
    planned: Sequence[_Household], rng: random.Random
) -> tuple[list[tuple[object, ...]], list[tuple[str, str]]]:
    rows_by_prefix: dict[str, list[tuple[object, ...]]] = {}
    links: list[tuple[str, str]] = []
    numbers = {"NG": 0, "LPG": 0}
    ages = [timedelta(days=days) for days in range(30, 241)]
    for hh in planned:
        number = numbers[hh.gas_type] = numbers[hh.gas_type] + 1
        kit = _NG_KIT if hh.gas_type == "NG" else _LPG_KIT
        year = hh.installed_on.year % 100
        for model_id, prefix in kit:
            imei = _imei(number) if model_id == MODEL_NG_ALARM else None
            manufactured_on = hh.installed_on - rng.choice(ages)
            rows_by_prefix.setdefault(prefix, []).append(
                (
                    f"{prefix}-{number:06d}",
                    hh.id,
                    model_id,
                    f"{prefix}{year:02d}{number:07d}",
                    imei,
                    manufactured_on,
                    hh.installed_on,
                )
            )
        if hh.gas_type == "NG":
            links.append((f"GA-{number:06d}", f"GV-{number:06d}"))
    # Copy in key order: PostgreSQL appends ever-increasing keys to the rightmost B-tree leaf directly,
    # which makes the primary-key and serial indexes much cheaper to build.
    devices = [row for prefix in sorted(rows_by_prefix) for row in rows_by_prefix[prefix]]
    return devices, links


def _resident_name(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return rng.choice(_MONGOLIAN_NAMES)
    given_length = 1 if rng.random() < 0.3 else 2
    return rng.choice(_HAN_SURNAMES) + "".join(rng.choice(_HAN_GIVEN) for _ in range(given_length))


def _unique_phone(rng: random.Random, taken: set[str]) -> str:
    while True:
        phone = f"{rng.choice(_MOBILE_PREFIXES)}{rng.randrange(10**8):08d}"
        if phone not in taken:
            taken.add(phone)
            return phone


def _imei(number: int) -> str:
    body = f"{_DEMO_TAC}{number:06d}"
    return body + str(_luhn_check_digit(body))


def _luhn_check_digit(body: str) -> int:
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:  # doubled: every second digit counting from the check digit's left
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return (10 - total % 10) % 10
