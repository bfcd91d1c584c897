"""The demo county: 丹寨县 (Danzhai), 黔东南苗族侗族自治州, 贵州省, with its townships, villages,
schools and the names people there carry.

What is real and what is plausible:

- The county code 522636 and the neighbouring county codes in ``BIRTH_AREAS`` / ``OTHER_COUNTIES``
  are real GB/T 2260 codes.
- The six townships are Danzhai's real towns and townships. Their 9-digit statistical codes follow
  the national statistical convention (001-099 街道, 100-199 镇, 200-299 乡) but are *plausible, not
  verified* against the statistics bureau's table.
- Village names mix real ones (卡拉村, 高要村, 石桥村, 羊先村 ...) with plausible ones; their 3-digit
  codes follow the convention (0xx 社区/居委会, 2xx 村委会) and are plausible, not verified.
- School names and the 10-digit 学校标识码 are plausible, generated from the township names.
- Surnames are weighted towards those common in the Miao and Dong areas of Guizhou (杨, 王, 吴, 潘 ...).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PROVINCE = "贵州省"
PREFECTURE = "黔东南苗族侗族自治州"
COUNTY_NAME = "丹寨县"
COUNTY_CODE = "522636"
EDUCATION_BUREAU = "丹寨县教育和科技局"

# Where the county's children were born (the first 6 digits of their ID): mostly at home, some in
# the prefecture's hospitals in 凯里 or in the neighbouring counties. Real codes.
BIRTH_AREAS: tuple[tuple[str, float], ...] = (
    ("522636", 0.86),  # 丹寨县
    ("522601", 0.08),  # 凯里市
    ("522635", 0.03),  # 麻江县
    ("522634", 0.03),  # 雷山县
)
# Codes used when one birth area and date run out of sequence numbers (only at huge scales).
OVERFLOW_AREAS: tuple[str, ...] = ("522622", "522623", "522624", "522625", "522626", "522627")

# Counties migrant students come from (real codes), with a township-level 12-digit code shape.
OTHER_COUNTIES: tuple[tuple[str, str], ...] = (
    ("522601", "凯里市"),
    ("522635", "麻江县"),
    ("522634", "雷山县"),
    ("522732", "三都水族自治县"),
    ("522701", "都匀市"),
)

# Schools outside the county that students transfer to (plausible names).
TRANSFER_DESTINATIONS: tuple[str, ...] = (
    "凯里市第一小学",
    "凯里市第三中学",
    "凯里市第十一小学",
    "都匀市第二中学",
    "贵阳市南明区甲秀小学",
    "贵阳市云岩区第十九中学",
    "浙江省宁波市鄞州区姜山镇中心小学",
    "浙江省温州市瓯海区外来务工人员子女学校",
    "广东省东莞市长安镇第一小学",
    "广东省深圳市宝安区松岗中学",
    "福建省晋江市安海镇第二中学",
    "麻江县宣威中学",
    "雷山县丹江小学",
)


@dataclass(frozen=True, slots=True)
class Village:
    name: str
    code: str  # 12-digit statistical code: township (9) + village (3)
    kind: str  # "社区" or "村"


@dataclass(frozen=True, slots=True)
class Township:
    name: str
    code: str  # 9-digit statistical code (canonical area_code)
    weight: float  # share of the county's population
    villages: tuple[Village, ...]

    @property
    def code12(self) -> str:
        """The 12-digit code the student-status system records: township + 000."""
        return self.code + "000"

    @property
    def short(self) -> str:
        """兴仁镇 -> 兴仁, used in school names."""
        return self.name[:-1]


def _township(name: str, code: str, weight: float, communities: str, villages: str) -> Township:
    items: list[Village] = []
    for i, v in enumerate(communities.split()):
        items.append(Village(v, f"{code}{i + 1:03d}", "社区"))
    for i, v in enumerate(villages.split()):
        items.append(Village(v, f"{code}{200 + i + 1:03d}", "村"))
    return Township(name, code, weight, tuple(items))


TOWNSHIPS: tuple[Township, ...] = (
    _township(
        "龙泉镇",
        "522636100",
        0.34,
        "城东社区 城南社区 城北社区 金钟社区",
        "卡拉村 高要村 马寨村 羊甲村 排牙村 五里村 泉山村 平寨村 燕子村 龙泉村",
    ),
    _township(
        "兴仁镇",
        "522636101",
        0.16,
        "兴仁社区",
        "王家村 烧茶村 翻仰村 排佐村 岩英村 摆泥村 园艺村 复兴村",
    ),
    _township(
        "排调镇",
        "522636102",
        0.15,
        "排调社区",
        "羊先村 麻鸟村 党早村 加配村 甲石村 排调村 也改村 雅蒿村",
    ),
    _township(
        "扬武镇",
        "522636103",
        0.16,
        "扬武社区",
        "扬武村 排莫村 长青村 番鸟村 羊排村 老八寨村 排倒村 乌湾村",
    ),
    _township(
        "雅灰乡",
        "522636200",
        0.08,
        "",
        "雅灰村 送陇村 也都村 乌空村 方寨村 甲翁村",
    ),
    _township(
        "南皋乡",
        "522636201",
        0.11,
        "",
        "南皋村 石桥村 清江村 高排村 排树村 南猛村",
    ),
)

GRADES_PRIMARY: tuple[str, ...] = ("一年级", "二年级", "三年级", "四年级", "五年级", "六年级")
GRADES_JUNIOR: tuple[str, ...] = ("七年级", "八年级", "九年级")
GRADES: tuple[str, ...] = GRADES_PRIMARY + GRADES_JUNIOR


@dataclass(frozen=True, slots=True)
class School:
    code: str  # 学校标识码, 10 digits
    name: str
    township: Township
    level: str  # "小学" or "初中"
    classes_per_grade: int

    @property
    def grades(self) -> tuple[str, ...]:
        return GRADES_PRIMARY if self.level == "小学" else GRADES_JUNIOR


@dataclass(slots=True)
class SchoolDirectory:
    """The county's schools, sized for the number of students generated."""

    schools: list[School] = field(default_factory=list)
    by_township: dict[tuple[str, str], list[School]] = field(default_factory=dict)

    def pick(self, rng: random.Random, township: Township, level: str) -> School:
        return rng.choice(self.by_township[(township.code, level)])


# Students per school and per class the directory aims at.
_PRIMARY_SIZE = 420
_JUNIOR_SIZE = 900
_CLASS_SIZE = 45
_CHINESE_ORDINALS = "一二三四五六七八九十"


def _ordinal(n: int) -> str:
    """1 -> 一, 12 -> 十二, 40 -> 四十, 105 -> 一百零五, 113 -> 一百一十三 (Arabic from 1000 on)."""
    digits = _CHINESE_ORDINALS
    if n < 1:
        raise ValueError(n)
    if n <= 10:
        return digits[n - 1]
    if n < 20:
        return "十" + digits[n - 11]
    if n < 100:
        tens, units = divmod(n, 10)
        return digits[tens - 1] + "十" + (digits[units - 1] if units else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        text = digits[hundreds - 1] + "百"
        if rest == 0:
            return text
        if rest < 10:
            return text + "零" + digits[rest - 1]
        return text + ("一" if rest < 20 else "") + _ordinal(rest)
    return str(n)


def build_schools(students: int, rng: random.Random) -> SchoolDirectory:
    """Primary schools and junior middle schools per township, enough for ``students``.

    Names: the township's 中心小学 first, then village schools named after villages, then numbered
    schools once the villages run out (only at large scales). Codes are unique 10-digit 学校标识码
    of the shape 2152xxxxxx (plausible: "2" school, "52" Guizhou).
    """
    directory = SchoolDirectory()
    used_codes: set[str] = set()

    def new_code() -> str:
        while True:
            code = "2152" + f"{rng.randrange(10**6):06d}"
            if code not in used_codes:
                used_codes.add(code)
                return code

    for t in TOWNSHIPS:
        share = students * t.weight
        primary_students = share * 6 / 9
        junior_students = share * 3 / 9
        n_primary = max(1, round(primary_students / _PRIMARY_SIZE))
        n_junior = max(1, round(junior_students / _JUNIOR_SIZE))
        per_grade_primary = primary_students / n_primary / 6
        per_grade_junior = junior_students / n_junior / 3
        villages = [v for v in t.villages if v.kind == "村"]
        primary: list[School] = []
        for i in range(n_primary):
            if i == 0:
                name = f"{COUNTY_NAME}{t.name}中心小学"
            elif i <= len(villages):
                name = f"{COUNTY_NAME}{t.name}{villages[i - 1].name[:-1]}小学"
            else:
                name = f"{COUNTY_NAME}{t.name}第{_ordinal(i - len(villages) + 1)}小学"
            classes = max(1, round(per_grade_primary / _CLASS_SIZE))
            primary.append(School(new_code(), name, t, "小学", classes))
        junior: list[School] = []
        for i in range(n_junior):
            if t.code == TOWNSHIPS[0].code:  # the county seat's schools carry the county's name
                name = f"{COUNTY_NAME}第{_ordinal(i + 1)}中学"
            elif i == 0:
                name = f"{COUNTY_NAME}{t.short}中学"
            else:
                name = f"{COUNTY_NAME}{t.short}第{_ordinal(i + 1)}中学"
            classes = max(1, round(per_grade_junior / _CLASS_SIZE))
            junior.append(School(new_code(), name, t, "初中", classes))
        directory.schools.extend(primary + junior)
        directory.by_township[(t.code, "小学")] = primary
        directory.by_township[(t.code, "初中")] = junior
    return directory


# Surnames with rough weights for the Miao/Dong areas of south-east Guizhou.
SURNAMES: tuple[tuple[str, int], ...] = (
    ("杨", 120),
    ("王", 80),
    ("吴", 70),
    ("潘", 55),
    ("陈", 45),
    ("李", 45),
    ("龙", 35),
    ("余", 30),
    ("罗", 28),
    ("张", 28),
    ("韦", 22),
    ("蒙", 20),
    ("石", 20),
    ("熊", 15),
    ("刘", 15),
    ("黄", 14),
    ("文", 12),
    ("顾", 10),
    ("莫", 10),
    ("宋", 8),
    ("金", 8),
    ("赵", 8),
    ("欧", 6),
    ("田", 6),
    ("邰", 5),
    ("万", 5),
    ("姜", 5),
    ("唐", 5),
    ("周", 5),
    ("胡", 4),
)

# Given-name characters, by sex and generation (children born after 2005, adults before).
GIVEN_YOUNG_M = "浩宇轩涛明斌鑫磊林杰俊博睿晨航阳泽豪子梓铭宏辰逸凯文瑞恒康鹏志嘉皓"
GIVEN_YOUNG_F = "婷娟芳敏静雪琳欣怡佳雨萱梦瑶璐思颖玉蕊诗涵可馨悦妍倩雅彤语婉菲"
GIVEN_OLD_M = "国华建军光明学文德平永福富贵正荣开成云生玉海金昌运祥兴发忠"
GIVEN_OLD_F = "秀英兰芬花梅珍桂凤琴翠萍菊霞春燕芝艳香仙美玉英妹"


def _weighted_surnames() -> tuple[list[str], list[int]]:
    names, weights = zip(*SURNAMES, strict=True)
    return list(names), list(weights)


_SURNAME_LIST, _SURNAME_WEIGHTS = _weighted_surnames()


def surname(rng: random.Random) -> str:
    return rng.choices(_SURNAME_LIST, _SURNAME_WEIGHTS)[0]


def given_name(rng: random.Random, sex: str, birth_year: int) -> str:
    """One or two characters; ``sex`` is "1" male or "2" female."""
    young = birth_year >= 2000
    if sex == "1":
        pool = GIVEN_YOUNG_M if young else GIVEN_OLD_M
    else:
        pool = GIVEN_YOUNG_F if young else GIVEN_OLD_F
    if rng.random() < (0.25 if young else 0.35):
        return rng.choice(pool)
    first, second = rng.sample(pool, 2)
    return first + second


def phone(rng: random.Random) -> str:
    """A mobile number of the shape local carriers hand out (plausible, random)."""
    prefix = rng.choice(("139", "138", "135", "136", "151", "152", "157", "187", "188", "182"))
    return prefix + f"{rng.randrange(10**8):08d}"
