"""The sandbox's seeds: ``empty`` (the OAuth app and two bare accounts) and ``demo`` (realistic data).

Everything is deterministic. Each account draws from its own ``random.Random`` seeded by a string
derived from the account slug (string seeds are hashed with SHA-512 by ``random``, so they do not
depend on ``PYTHONHASHSEED``), and the only clock is the ``now`` passed in. Two builds with the same
``now`` are identical; account ids and API keys do not depend on ``now`` at all, so a developer's
configured key keeps working from one day to the next.

The people of an account come from ``demo_people``, a pure function that the Recart demo-data
generator calls too, so Klaviyo profiles and Recart subscribers are the same people (same email,
phone and external id).

The demo data is *simulated*, not sprinkled: campaigns and flows send to whoever can receive email
at that moment, opens and clicks follow each profile's engagement, clicks lead to shopping sessions,
unfinished checkouts feed the Abandoned Cart flow, and the behavioural segments are computed from
the resulting events. That keeps the sandbox internally consistent (a flow email event's ``$flow``
is a real flow, an "Abandoned cart 7 days" member really started a checkout, …).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import math
import random
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from klaviyo_sandbox import ids
from klaviyo_sandbox.store import (
    Account,
    Campaign,
    CampaignMessage,
    ChannelConsent,
    Event,
    Flow,
    FlowAction,
    FlowMessage,
    KList,
    Metric,
    OAuthClient,
    Profile,
    Segment,
    Store,
    Suppression,
    utcnow,
)

__all__ = [
    "DEMO_ACCOUNTS",
    "DEMO_OAUTH_APP_NAME",
    "DEMO_OAUTH_CLIENT_ID",
    "DEMO_OAUTH_CLIENT_SECRET",
    "DEMO_REDIRECT_URIS",
    "KLAVIYO_SCOPES",
    "SEEDS",
    "DemoAccount",
    "DemoPerson",
    "demo_people",
    "describe_store",
    "seed_store",
]

# ---------------------------------------------------------------------------- public constants

DEMO_OAUTH_CLIENT_ID: str = "recart-demo-client"
DEMO_OAUTH_CLIENT_SECRET: str = "recart-demo-secret-5b8e2f47c1d94a6e"
DEMO_OAUTH_APP_NAME: str = "Recart (demo)"
DEMO_REDIRECT_URIS: list[str] = [
    "http://127.0.0.1:8000/oauth/klaviyo/callback",
    "http://localhost:8000/oauth/klaviyo/callback",
]

#: Every scope of the Klaviyo API (the 46 names of the spec's ``x-klaviyo-scopes``).
KLAVIYO_SCOPES: tuple[str, ...] = (
    "accounts:read",
    *(
        f"{area}:{mode}"
        for area in (
            "campaigns",
            "catalogs",
            "conversations",
            "coupon-codes",
            "coupons",
            "custom-objects",
        )
        for mode in ("read", "write")
    ),
    "data-privacy:write",
    *(
        f"{area}:{mode}"
        for area in (
            "events",
            "flows",
            "forms",
            "images",
            "lists",
            "metrics",
            "profiles",
            "push-tokens",
            "reviews",
            "segments",
            "subscriptions",
            "tags",
            "templates",
            "tracking-settings",
            "web-feeds",
            "webhooks",
        )
        for mode in ("read", "write")
    ),
)

SEEDS: tuple[str, ...] = ("demo", "empty")

# Klaviyo's own integration (email/SMS metrics) and the Shopify one (shop metrics), as metrics carry them.
KLAVIYO_INTEGRATION: dict[str, str] = {
    "object": "integration",
    "id": "0rG4eQ",
    "key": "klaviyo",
    "name": "Klaviyo",
    "category": "Internal",
}
SHOPIFY_INTEGRATION: dict[str, str] = {
    "object": "integration",
    "id": "0eMvjm",
    "key": "shopify",
    "name": "Shopify",
    "category": "eCommerce",
}

# How far back the simulated events go ("about four weeks of activity").
EVENT_WINDOW = timedelta(days=28)

# ---------------------------------------------------------------------------- geography and names


@dataclass(frozen=True)
class _City:
    name: str
    region: str
    timezone: str
    area_codes: tuple[str, ...]  # NANP only; GB/AU people get national mobile numbers
    postcodes: tuple[str, ...]  # zip prefixes (US, AU), FSAs (CA) or outward codes (GB)
    locale: str = ""


@dataclass(frozen=True)
class _Country:
    code: str
    name: str
    locale: str
    cities: tuple[_City, ...]
    email_domains: tuple[tuple[str, int], ...]


_US = _Country(
    "US",
    "United States",
    "en-US",
    (
        _City("New York", "New York", "America/New_York", ("212", "646", "917"), ("100", "101", "102")),
        _City("Brooklyn", "New York", "America/New_York", ("718", "347", "929"), ("112",)),
        _City("Philadelphia", "Pennsylvania", "America/New_York", ("215", "267"), ("191",)),
        _City("Boston", "Massachusetts", "America/New_York", ("617", "857"), ("021",)),
        _City("Atlanta", "Georgia", "America/New_York", ("404", "678"), ("303",)),
        _City("Miami", "Florida", "America/New_York", ("305", "786"), ("331",)),
        _City("Charlotte", "North Carolina", "America/New_York", ("704", "980"), ("282",)),
        _City("Raleigh", "North Carolina", "America/New_York", ("919", "984"), ("276",)),
        _City("Chicago", "Illinois", "America/Chicago", ("312", "773"), ("606",)),
        _City("Minneapolis", "Minnesota", "America/Chicago", ("612",), ("554",)),
        _City("Nashville", "Tennessee", "America/Chicago", ("615", "629"), ("372",)),
        _City("Houston", "Texas", "America/Chicago", ("713", "832"), ("770",)),
        _City("Austin", "Texas", "America/Chicago", ("512", "737"), ("787",)),
        _City("Dallas", "Texas", "America/Chicago", ("214", "469"), ("752",)),
        _City("Denver", "Colorado", "America/Denver", ("303", "720"), ("802",)),
        _City("Boulder", "Colorado", "America/Denver", ("303", "720"), ("803",)),
        _City("Salt Lake City", "Utah", "America/Denver", ("801", "385"), ("841",)),
        _City("Phoenix", "Arizona", "America/Phoenix", ("602", "480"), ("850",)),
        _City("Las Vegas", "Nevada", "America/Los_Angeles", ("702", "725"), ("891",)),
        _City("Los Angeles", "California", "America/Los_Angeles", ("213", "310", "323"), ("900",)),
        _City("San Diego", "California", "America/Los_Angeles", ("619", "858"), ("921",)),
        _City("San Francisco", "California", "America/Los_Angeles", ("415", "628"), ("941",)),
        _City("Portland", "Oregon", "America/Los_Angeles", ("503", "971"), ("972",)),
        _City("Seattle", "Washington", "America/Los_Angeles", ("206", "425"), ("981",)),
    ),
    (
        ("gmail.com", 45),
        ("yahoo.com", 12),
        ("icloud.com", 12),
        ("outlook.com", 8),
        ("hotmail.com", 7),
        ("aol.com", 4),
        ("comcast.net", 3),
        ("me.com", 2),
        ("proton.me", 2),
    ),
)

_CA = _Country(
    "CA",
    "Canada",
    "en-CA",
    (
        _City("Toronto", "Ontario", "America/Toronto", ("416", "647", "437"), ("M5V", "M4C", "M6J", "M5A")),
        _City("Ottawa", "Ontario", "America/Toronto", ("613", "343"), ("K1P", "K2P")),
        _City("Montreal", "Quebec", "America/Toronto", ("514", "438"), ("H2X", "H3B", "H2T"), locale="fr-CA"),
        _City("Vancouver", "British Columbia", "America/Vancouver", ("604", "778"), ("V6B", "V5K", "V6K")),
        _City("Calgary", "Alberta", "America/Edmonton", ("403", "587"), ("T2P", "T3A")),
        _City("Halifax", "Nova Scotia", "America/Halifax", ("902", "782"), ("B3H", "B3J")),
    ),
    (
        ("gmail.com", 45),
        ("hotmail.com", 12),
        ("icloud.com", 10),
        ("outlook.com", 10),
        ("yahoo.ca", 8),
        ("shaw.ca", 4),
        ("rogers.com", 4),
    ),
)

_GB = _Country(
    "GB",
    "United Kingdom",
    "en-GB",
    (
        _City("London", "England", "Europe/London", (), ("SW1A", "E1", "N1", "SE1", "W1T", "NW3", "E8")),
        _City("Manchester", "England", "Europe/London", (), ("M1", "M4", "M20")),
        _City("Birmingham", "England", "Europe/London", (), ("B1", "B15")),
        _City("Leeds", "England", "Europe/London", (), ("LS1", "LS6")),
        _City("Bristol", "England", "Europe/London", (), ("BS1", "BS8")),
        _City("Glasgow", "Scotland", "Europe/London", (), ("G1", "G12")),
        _City("Edinburgh", "Scotland", "Europe/London", (), ("EH1", "EH3")),
        _City("Cardiff", "Wales", "Europe/London", (), ("CF10", "CF11")),
    ),
    (
        ("gmail.com", 40),
        ("hotmail.co.uk", 15),
        ("outlook.com", 10),
        ("yahoo.co.uk", 10),
        ("icloud.com", 10),
        ("btinternet.com", 6),
        ("sky.com", 4),
    ),
)

_AU = _Country(
    "AU",
    "Australia",
    "en-AU",
    (
        _City("Sydney", "New South Wales", "Australia/Sydney", (), ("20",)),
        _City("Melbourne", "Victoria", "Australia/Melbourne", (), ("30",)),
        _City("Brisbane", "Queensland", "Australia/Brisbane", (), ("40",)),
        _City("Perth", "Western Australia", "Australia/Perth", (), ("60",)),
        _City("Adelaide", "South Australia", "Australia/Adelaide", (), ("50",)),
    ),
    (
        ("gmail.com", 45),
        ("hotmail.com", 10),
        ("outlook.com", 10),
        ("bigpond.com", 10),
        ("icloud.com", 10),
        ("yahoo.com.au", 6),
        ("optusnet.com.au", 4),
    ),
)

_COUNTRIES: dict[str, _Country] = {c.code: c for c in (_US, _CA, _GB, _AU)}

# Where each demo shop's customers live; any other slug gets the default mix.
_COUNTRY_MIX: dict[str, tuple[tuple[str, float], ...]] = {
    "acme-outdoor": (("US", 0.68), ("CA", 0.16), ("GB", 0.08), ("AU", 0.08)),
    "bloom-beauty": (("US", 0.55), ("GB", 0.22), ("CA", 0.11), ("AU", 0.12)),
    "maple-moss": (("GB", 0.76), ("US", 0.10), ("AU", 0.09), ("CA", 0.05)),
}
_DEFAULT_MIX: tuple[tuple[str, float], ...] = (("US", 0.7), ("CA", 0.1), ("GB", 0.1), ("AU", 0.1))

# One string per table keeps these readable; split once at import.
_FIRST_NAMES: tuple[str, ...] = tuple(
    [
        "Emma",
        "Olivia",
        "Ava",
        "Sophia",
        "Isabella",
        "Mia",
        "Charlotte",
        "Amelia",
        "Harper",
        "Evelyn",
        "Abigail",
        "Emily",
        "Ella",
        "Elizabeth",
        "Camila",
        "Luna",
        "Sofia",
        "Avery",
        "Mila",
        "Aria",
        "Scarlett",
        "Penelope",
        "Layla",
        "Chloe",
        "Victoria",
        "Madison",
        "Eleanor",
        "Grace",
        "Nora",
        "Riley",
        "Zoey",
        "Hannah",
        "Hazel",
        "Lily",
        "Ellie",
        "Violet",
        "Zoe",
        "Stella",
        "Aurora",
        "Natalie",
        "Leah",
        "Willow",
        "Lucy",
        "Audrey",
        "Bella",
        "Claire",
        "Maya",
        "Sarah",
        "Jessica",
        "Rachel",
        "Megan",
        "Lauren",
        "Ashley",
        "Priya",
        "Aisha",
        "Mei",
        "Yuki",
        "Fatima",
        "Amara",
        "Lucia",
        "Siobhan",
        "Niamh",
        "Freya",
        "Isla",
        "Imogen",
        "Poppy",
        "Liam",
        "Noah",
        "Oliver",
        "Elijah",
        "James",
        "William",
        "Benjamin",
        "Lucas",
        "Henry",
        "Theodore",
        "Jack",
        "Levi",
        "Alexander",
        "Jackson",
        "Mateo",
        "Daniel",
        "Michael",
        "Mason",
        "Sebastian",
        "Ethan",
        "Logan",
        "Owen",
        "Samuel",
        "Jacob",
        "Asher",
        "Aiden",
        "John",
        "Joseph",
        "Wyatt",
        "David",
        "Leo",
        "Luke",
        "Julian",
        "Hudson",
        "Grayson",
        "Matthew",
        "Ezra",
        "Gabriel",
        "Carter",
        "Isaac",
        "Luca",
        "Anthony",
        "Dylan",
        "Thomas",
        "Elias",
        "Charles",
        "Caleb",
        "Christopher",
        "Miles",
        "Andrew",
        "Joshua",
        "Nathan",
        "Nolan",
        "Adrian",
        "Cameron",
        "Ryan",
        "Kevin",
        "Brian",
        "Marcus",
        "Omar",
        "Raj",
        "Wei",
        "Hiroshi",
        "Kwame",
        "Diego",
        "Connor",
        "Callum",
        "Harry",
        "George",
        "Alfie",
        "Rhys",
        "Finn",
    ]
)

_LAST_NAMES: tuple[str, ...] = tuple(
    [
        "Smith",
        "Johnson",
        "Williams",
        "Brown",
        "Jones",
        "Garcia",
        "Miller",
        "Davis",
        "Rodriguez",
        "Martinez",
        "Hernandez",
        "Lopez",
        "Gonzalez",
        "Wilson",
        "Anderson",
        "Thomas",
        "Taylor",
        "Moore",
        "Jackson",
        "Martin",
        "Lee",
        "Perez",
        "Thompson",
        "White",
        "Harris",
        "Sanchez",
        "Clark",
        "Ramirez",
        "Lewis",
        "Robinson",
        "Walker",
        "Young",
        "Allen",
        "King",
        "Wright",
        "Scott",
        "Torres",
        "Nguyen",
        "Hill",
        "Flores",
        "Green",
        "Adams",
        "Nelson",
        "Baker",
        "Hall",
        "Rivera",
        "Campbell",
        "Mitchell",
        "Carter",
        "Roberts",
        "Patel",
        "Kim",
        "Chen",
        "Singh",
        "Murphy",
        "O'Brien",
        "Kelly",
        "Walsh",
        "Byrne",
        "Ryan",
        "Evans",
        "Davies",
        "Hughes",
        "Edwards",
        "Wood",
        "Morgan",
        "Cooper",
        "Turner",
        "Parker",
        "Collins",
        "Stewart",
        "Morris",
        "Rogers",
        "Reed",
        "Cook",
        "Bell",
        "Murray",
        "Bailey",
        "Cox",
        "Howard",
        "Ward",
        "Peterson",
        "Gray",
        "Watson",
        "Brooks",
        "Sanders",
        "Price",
        "Bennett",
        "Ross",
        "Foster",
        "Powell",
        "Jenkins",
        "Perry",
        "Russell",
        "Sullivan",
        "Fraser",
        "MacDonald",
        "Tremblay",
        "Gagnon",
        "Roy",
        "Bouchard",
        "Wong",
        "Tran",
        "Ali",
        "Khan",
        "Shah",
        "Novak",
        "Kowalski",
        "Rossi",
        "Muller",
        "Schmidt",
        "Jensen",
        "Larsen",
        "Nakamura",
        "Tanaka",
        "Silva",
        "Costa",
        "Okafor",
        "Mensah",
        "Cohen",
        "Friedman",
        "Park",
        "Choi",
        "Reyes",
        "Morales",
    ]
)

_NON_LETTERS = re.compile(r"[^a-z]")
_GB_MOBILE_SECOND_DIGITS = "45789"  # 074xx-079xx: ranges phonenumbers treats as valid UK mobiles
# Within those, prefixes that are invalid (07700 900xxx is reserved for drama) or that belong to the
# Crown Dependencies (+44 but region JE, GG or IM per phonenumbers), found by checking every prefix.
_GB_EXCLUDED_MOBILE_PREFIXES = frozenset(
    {"7457", "7509", "7524", "7700", "7781", "7797", "7829", "7839", "7911", "7937"}
)
_CA_LETTERS = "ABCEGHJKLMNPRSTVWXYZ"  # letters Canada Post uses in postal codes
_GB_UNIT_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"


@dataclass(frozen=True)
class DemoPerson:
    """One deterministic demo person, shared by the Klaviyo demo profiles and the Recart demo subscribers.

    ``signup_age`` is how long before the seed's ``now`` the person signed up (became a profile),
    so both generators can place the person on the same timeline without sharing a clock.
    """

    index: int
    email: str
    phone_number: str | None  # E.164, valid per ``phonenumbers``; None for about a quarter of people
    external_id: str  # e.g. "shopify:2318421"
    first_name: str
    last_name: str
    city: str
    region: str
    country: str  # country name, as Klaviyo profiles carry it ("United States")
    country_code: str  # ISO 3166-1 alpha-2 ("US")
    zip: str
    timezone: str
    locale: str
    signup_age: timedelta


def demo_people(account_slug: str, count: int, seed: int = 0) -> Iterator[DemoPerson]:
    """The deterministic people of one demo account.

    A pure function of its arguments (no Store, no clock, no global random state) that is cheap to
    call. The sequence is prefix-stable: the first *n* people are the same whatever ``count`` is.
    Emails, phone numbers and external ids are unique within one call.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    rng = random.Random(f"klaviyo-sandbox/people/{account_slug}/{seed}")
    mix = _COUNTRY_MIX.get(account_slug, _DEFAULT_MIX)
    codes = [code for code, _ in mix]
    cum_weights = list(itertools.accumulate(weight for _, weight in mix))
    seen_emails: set[str] = set()
    seen_phones: set[str] = set()
    # Shopify-like customer numbers: increasing with signup order, unique by construction.
    next_customer = rng.randrange(1_200_000, 3_800_000)
    for index in range(count):
        country = _COUNTRIES[rng.choices(codes, cum_weights=cum_weights)[0]]
        city = rng.choice(country.cities)
        first = rng.choice(_FIRST_NAMES)
        last = rng.choice(_LAST_NAMES)
        email = _demo_email(rng, first, last, country, seen_emails)
        has_phone = rng.random() < 0.75
        phone = _demo_phone(rng, country, city, seen_phones) if has_phone else None
        next_customer += rng.randrange(3, 140)
        # Skewed towards recent signups: lists grow over time.
        signup_seconds = int(365 * 86_400 * rng.random() ** 1.25)
        yield DemoPerson(
            index=index,
            email=email,
            phone_number=phone,
            external_id=f"shopify:{next_customer}",
            first_name=first,
            last_name=last,
            city=city.name,
            region=city.region,
            country=country.name,
            country_code=country.code,
            zip=_demo_postcode(rng, country.code, city),
            timezone=city.timezone,
            locale=city.locale or country.locale,
            signup_age=timedelta(seconds=max(signup_seconds, 600)),
        )


def _demo_email(rng: random.Random, first: str, last: str, country: _Country, seen: set[str]) -> str:
    f = _NON_LETTERS.sub("", first.lower())
    la = _NON_LETTERS.sub("", last.lower())
    domains = [d for d, _ in country.email_domains]
    weights = [w for _, w in country.email_domains]
    while True:
        pattern = rng.randrange(8)
        if pattern == 0:
            local = f"{f}.{la}"
        elif pattern == 1:
            local = f"{f}{la}"
        elif pattern == 2:
            local = f"{f[0]}{la}"
        elif pattern == 3:
            local = f"{f}_{la}"
        elif pattern == 4:
            local = f"{f}{la}{rng.randrange(1, 100)}"
        elif pattern == 5:
            local = f"{f}.{la}{rng.randrange(60, 100):02d}"
        elif pattern == 6:
            local = f"{f}{rng.randrange(1965, 2006)}"
        else:
            local = f"{f[0]}.{la}{rng.randrange(1, 1000)}"
        email = f"{local}@{rng.choices(domains, weights=weights)[0]}"
        if email not in seen:
            seen.add(email)
            return email


def _demo_phone(rng: random.Random, country: _Country, city: _City, seen: set[str]) -> str:
    # Ranges chosen so that phonenumbers.is_valid_number accepts every draw (checked exhaustively
    # per area code / prefix when this was written, and per person by the tests): real area codes,
    # exchanges 200-999 minus N11 and the fictional 555; UK 074xx-079xx mobiles; AU 040x-043x mobiles.
    while True:
        if country.code in ("US", "CA"):
            exchange = rng.randrange(200, 1000)
            if exchange % 100 == 11 or exchange == 555:
                continue
            phone = f"+1{rng.choice(city.area_codes)}{exchange}{rng.randrange(10_000):04d}"
        elif country.code == "GB":
            prefix = f"7{rng.choice(_GB_MOBILE_SECOND_DIGITS)}{rng.randrange(100):02d}"
            if prefix in _GB_EXCLUDED_MOBILE_PREFIXES:
                continue
            phone = f"+44{prefix}{rng.randrange(1_000_000):06d}"
        else:  # AU
            phone = f"+614{rng.randrange(4)}{rng.randrange(10_000_000):07d}"
        if phone not in seen:
            seen.add(phone)
            return phone


def _demo_postcode(rng: random.Random, country_code: str, city: _City) -> str:
    prefix = rng.choice(city.postcodes)
    if country_code == "US":
        return f"{prefix}{rng.randrange(1, 100):02d}"
    if country_code == "AU":
        return f"{prefix}{rng.randrange(100):02d}"
    if country_code == "CA":
        return f"{prefix} {rng.randrange(10)}{rng.choice(_CA_LETTERS)}{rng.randrange(10)}"
    return f"{prefix} {rng.randrange(1, 10)}{rng.choice(_GB_UNIT_LETTERS)}{rng.choice(_GB_UNIT_LETTERS)}"


# ---------------------------------------------------------------------------- demo shops


@dataclass(frozen=True)
class _Product:
    product_id: str
    sku: str
    name: str
    category: str
    price: float

    @property
    def handle(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


@dataclass(frozen=True)
class _CampaignPlan:
    name: str
    channel: str  # email | sms
    status: str  # Sent | Scheduled | Draft
    days_from_now: float | None  # negative = sent in the past, positive = scheduled; None = draft
    audiences: tuple[str, ...]  # keys of lists/segments ("list:newsletter", "segment:engaged_90")
    subject: str = ""
    preview_text: str = ""
    sms_body: str = ""
    collection: str = "all"
    excluded: tuple[str, ...] = ()


@dataclass(frozen=True)
class _AccountSpec:
    slug: str
    name: str
    profiles: int
    timezone: str
    currency: str
    industry: str
    locale: str
    domain: str
    sender_local: str
    sms_enabled: bool
    sms_countries: tuple[str, ...]
    advanced_kdp: bool
    default_opt_in: str
    newsletter_opt_in: str
    age_days: int  # how long before `now` the account was created
    products: tuple[_Product, ...] = ()
    campaigns: tuple[_CampaignPlan, ...] = ()
    typical_order: float = 80.0  # the centre of average order values, in the account currency

    @property
    def website_url(self) -> str:
        return f"https://www.{self.domain}"

    @property
    def sender_email(self) -> str:
        return f"{self.sender_local}@{self.domain}"


def _products(base_id: int, sku_prefix: str, rows: Sequence[tuple[str, str, float]]) -> tuple[_Product, ...]:
    return tuple(
        _Product(str(base_id + 7919 * i), f"{sku_prefix}-{1001 + i}", name, category, price)
        for i, (name, category, price) in enumerate(rows)
    )


_ACME = _AccountSpec(
    slug="acme-outdoor",
    name="Acme Outdoor",
    profiles=5000,
    timezone="America/Denver",
    currency="USD",
    industry="Sporting Goods",
    locale="en-US",
    domain="acmeoutdoor.example",
    sender_local="hello",
    sms_enabled=True,
    sms_countries=("US", "CA"),
    advanced_kdp=True,
    default_opt_in="double_opt_in",
    newsletter_opt_in="double_opt_in",
    age_days=1240,
    typical_order=135.0,
    products=_products(
        7_402_118_000_000,
        "ACM",
        (
            ("Summit 2P Tent", "Tents", 289.0),
            ("Ridgeline Down Jacket", "Apparel", 219.0),
            ("Trailblazer Hiking Boots", "Footwear", 164.0),
            ("Alpine 45L Backpack", "Packs", 179.0),
            ("Featherlite Sleeping Bag", "Sleep", 149.0),
            ("Camp Stove Duo", "Cooking", 89.0),
            ("Merino Base Layer", "Apparel", 74.0),
            ("Insulated Water Bottle", "Accessories", 32.0),
            ("Carbon Trekking Poles", "Accessories", 59.0),
            ("Headlamp 400", "Accessories", 39.0),
        ),
    ),
    campaigns=(
        _CampaignPlan(
            "Spring Trail Gear Drop",
            "email",
            "Sent",
            -26.4,
            ("list:newsletter",),
            "New season, new trails: spring gear is here",
            "Fresh tents, packs and layers.",
            collection="new",
        ),
        _CampaignPlan(
            "Weekend Flash Sale: 20% Off Tents",
            "email",
            "Sent",
            -19.6,
            ("segment:engaged_90",),
            "48 hours only: 20% off every tent",
            "Sleep under the stars for less.",
            collection="tents",
            excluded=("segment:lapsed_180",),
        ),
        _CampaignPlan(
            "Flash Sale SMS: 25% Off Today",
            "sms",
            "Sent",
            -15.3,
            ("segment:sms_subscribers",),
            sms_body="Acme Outdoor: 25% off sitewide today only with code TRAIL25. Shop: "
            "https://acmeoutdoor.example/s/trail25 Reply STOP to opt out",
        ),
        _CampaignPlan(
            "New Arrivals: Ultralight Packs",
            "email",
            "Sent",
            -12.7,
            ("list:newsletter", "list:sms_email"),
            "Meet our lightest packs yet",
            "Carry more, feel less.",
            collection="packs",
        ),
        _CampaignPlan(
            "VIP Early Access: Summer Collection",
            "email",
            "Sent",
            -8.3,
            ("segment:vip", "list:vip"),
            "You're first in line, {first_name}",
            "VIP early access starts now.",
            collection="summer",
        ),
        _CampaignPlan(
            "Last Chance: Free Shipping Ends Tonight",
            "email",
            "Sent",
            -3.4,
            ("segment:engaged_90",),
            "Free shipping ends at midnight",
            "No minimum, no code needed.",
            collection="all",
        ),
        _CampaignPlan(
            "Summer Camping Checklist",
            "email",
            "Scheduled",
            4.25,
            ("list:newsletter",),
            "Your summer camping checklist",
            "Everything you need for the season.",
            collection="camping",
        ),
        _CampaignPlan(
            "Father's Day Gift Guide",
            "email",
            "Draft",
            None,
            ("segment:engaged_90",),
            "Gifts for the dad who loves the outdoors",
            "Ideas for every budget.",
            collection="gifts",
        ),
    ),
)

_BLOOM = _AccountSpec(
    slug="bloom-beauty",
    name="Bloom Beauty",
    profiles=3000,
    timezone="America/Los_Angeles",
    currency="USD",
    industry="Health & Beauty",
    locale="en-US",
    domain="bloombeauty.example",
    sender_local="care",
    sms_enabled=True,
    sms_countries=("US", "CA", "GB", "AU"),
    advanced_kdp=False,
    default_opt_in="single_opt_in",
    newsletter_opt_in="double_opt_in",
    age_days=890,
    typical_order=58.0,
    products=_products(
        8_105_337_000_000,
        "BLM",
        (
            ("Glow Vitamin C Serum", "Skincare", 48.0),
            ("Hydra Cloud Moisturizer", "Skincare", 42.0),
            ("Velvet Matte Lipstick", "Makeup", 24.0),
            ("Rose Clay Mask", "Skincare", 36.0),
            ("Silk Repair Hair Oil", "Haircare", 38.0),
            ("Daily Mineral SPF 50", "Suncare", 32.0),
            ("Lash Lift Mascara", "Makeup", 26.0),
            ("Night Renewal Retinol", "Skincare", 58.0),
            ("Botanical Gel Cleanser", "Skincare", 28.0),
        ),
    ),
    campaigns=(
        _CampaignPlan(
            "The Glow Edit",
            "email",
            "Sent",
            -25.2,
            ("list:newsletter",),
            "Your glow-up starts here",
            "Our most-loved serums, in one edit.",
            collection="glow",
        ),
        _CampaignPlan(
            "Mother's Day: Gifts She'll Love",
            "email",
            "Sent",
            -18.5,
            ("segment:engaged_90",),
            "Gifts she'll actually use",
            "Curated sets from $35.",
            collection="gifts",
        ),
        _CampaignPlan(
            "Spring Refresh SMS",
            "sms",
            "Sent",
            -14.1,
            ("segment:sms_subscribers",),
            sms_body="Bloom Beauty: spring refresh! Free mini with every order today. "
            "https://bloombeauty.example/s/spring Reply STOP to opt out",
        ),
        _CampaignPlan(
            "SPF Season Is Here",
            "email",
            "Sent",
            -10.6,
            ("list:newsletter", "list:sms_email"),
            "Don't skip this step",
            "Daily SPF that doesn't feel like SPF.",
            collection="suncare",
        ),
        _CampaignPlan(
            "VIP Double Points Week",
            "email",
            "Sent",
            -5.3,
            ("segment:vip",),
            "Double points, this week only",
            "Because you're a VIP.",
            collection="all",
        ),
        _CampaignPlan(
            "Summer Skin Kit Launch",
            "email",
            "Scheduled",
            2.6,
            ("segment:engaged_90",),
            "Meet the Summer Skin Kit",
            "Everything for sunny days.",
            collection="summer",
        ),
        _CampaignPlan(
            "Holiday Sets Preview",
            "email",
            "Draft",
            None,
            ("list:newsletter",),
            "A first look at holiday sets",
            "Wrapped and ready.",
            collection="holiday",
        ),
    ),
)

_MAPLE = _AccountSpec(
    slug="maple-moss",
    name="Maple & Moss Home",
    profiles=320,
    timezone="Europe/London",
    currency="GBP",
    industry="Home & Garden",
    locale="en-GB",
    domain="mapleandmoss.example",
    sender_local="hello",
    sms_enabled=False,
    sms_countries=(),
    advanced_kdp=False,
    default_opt_in="single_opt_in",
    newsletter_opt_in="single_opt_in",
    age_days=410,
    typical_order=62.0,
    products=_products(
        6_880_412_000_000,
        "MMH",
        (
            ("Linen Throw Blanket", "Textiles", 89.0),
            ("Cedarwood Soy Candle", "Candles", 34.0),
            ("Stoneware Mug Set", "Kitchen", 46.0),
            ("Jute Doormat", "Home", 39.0),
            ("Terracotta Planter", "Garden", 29.0),
            ("Wool Cushion Cover", "Textiles", 42.0),
        ),
    ),
    campaigns=(
        _CampaignPlan(
            "Autumn Nesting Edit",
            "email",
            "Sent",
            -21.3,
            ("list:newsletter",),
            "Cosy season starts now",
            "Throws, candles and more.",
            collection="autumn",
        ),
        _CampaignPlan(
            "Candle Restock + 15% Off",
            "email",
            "Sent",
            -7.4,
            ("segment:engaged_90",),
            "Your favourite candles are back",
            "Plus 15% off this weekend.",
            collection="candles",
        ),
        _CampaignPlan(
            "Winter Gift Guide",
            "email",
            "Draft",
            None,
            ("list:newsletter",),
            "Thoughtful gifts for home lovers",
            "Wrapped in recycled paper.",
            collection="gifts",
        ),
    ),
)

#: The demo accounts in order; the ``empty`` seed creates the first two without data.
_DEMO_ACCOUNTS: tuple[_AccountSpec, ...] = (_ACME, _BLOOM, _MAPLE)
_EMPTY_SEED_ACCOUNTS = 2


@dataclass(frozen=True)
class DemoAccount:
    """What other generators need to know about a seeded account (no Store required).

    ``demo_people(slug, profile_count)`` yields exactly the people behind the account's profiles.
    Ids and keys are the same in every build and in both seeds.
    """

    slug: str
    name: str
    account_id: str
    private_api_key: str
    public_api_key: str
    profile_count: int
    sms_enabled: bool
    in_empty_seed: bool


def _identity(slug: str) -> tuple[str, str]:
    """The account id and private API key of a demo account.

    They come from their own rng so that they never depend on ``now`` or on the generated data.
    """
    rng = random.Random(f"klaviyo-sandbox/account/{slug}")
    account_id = ids.short_id(rng)
    return account_id, f"pk_{rng.getrandbits(128):032x}"


def _describe_spec(position: int, spec: _AccountSpec) -> DemoAccount:
    account_id, private_key = _identity(spec.slug)
    return DemoAccount(
        slug=spec.slug,
        name=spec.name,
        account_id=account_id,
        private_api_key=private_key,
        # In Klaviyo the public API key (site id) is the 6-character account id itself.
        public_api_key=account_id,
        profile_count=spec.profiles,
        sms_enabled=spec.sms_enabled,
        in_empty_seed=position < _EMPTY_SEED_ACCOUNTS,
    )


#: The seeded accounts, in seeding order.
DEMO_ACCOUNTS: tuple[DemoAccount, ...] = tuple(
    _describe_spec(position, spec) for position, spec in enumerate(_DEMO_ACCOUNTS)
)

_SEGMENT_NAMES: dict[str, str] = {
    "engaged_30": "Engaged 30 days",
    "engaged_90": "Engaged 90 days",
    "vip": "VIP customers",
    "repeat_buyers": "Repeat buyers",
    "lapsed_180": "Lapsed 180 days",
    "clicked_no_purchase": "Clicked email, no purchase",
    "abandoned_cart_7": "Abandoned cart 7 days",
    "high_aov": "High AOV",
    "sms_subscribers": "SMS subscribers",
    "new_subscribers_30": "New subscribers 30 days",
    "browse_abandonment_14": "Browse abandonment 14 days",
    "never_purchased": "Never purchased",
}

_METRICS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("received_email", "Received Email", KLAVIYO_INTEGRATION),
    ("opened_email", "Opened Email", KLAVIYO_INTEGRATION),
    ("clicked_email", "Clicked Email", KLAVIYO_INTEGRATION),
    ("bounced_email", "Bounced Email", KLAVIYO_INTEGRATION),
    ("unsubscribed", "Unsubscribed", KLAVIYO_INTEGRATION),
    ("subscribed_to_list", "Subscribed to List", KLAVIYO_INTEGRATION),
    ("subscribed_to_back_in_stock", "Subscribed to Back in Stock", KLAVIYO_INTEGRATION),
    ("received_sms", "Received SMS", KLAVIYO_INTEGRATION),
    ("placed_order", "Placed Order", SHOPIFY_INTEGRATION),
    ("started_checkout", "Started Checkout", SHOPIFY_INTEGRATION),
    ("viewed_product", "Viewed Product", SHOPIFY_INTEGRATION),
)

# (Client Name, Client Type, Client OS, Client OS Family) seen on opens and clicks.
_EMAIL_CLIENTS: tuple[dict[str, str], ...] = tuple(
    {"Client Name": n, "Client Type": t, "Client OS": o, "Client OS Family": f}
    for n, t, o, f in (
        ("Apple Mail", "Mobile", "iOS", "iOS"),
        ("Apple Mail", "Mobile", "iOS", "iOS"),
        ("Gmail", "Mobile", "Android", "Android"),
        ("Gmail", "Webmail", "Windows", "Windows"),
        ("Gmail", "Webmail", "Mac OS X", "Mac OS X"),
        ("Outlook", "Desktop", "Windows", "Windows"),
        ("Apple Mail", "Desktop", "Mac OS X", "Mac OS X"),
        ("Yahoo! Mail", "Webmail", "Windows", "Windows"),
    )
)

_FORM_NAMES = ("Popup form", "Footer signup", "Flyout form", "Spin to win")


# ---------------------------------------------------------------------------- seeding


def seed_store(store: Store, seed: str, *, now: datetime | None = None) -> Store:
    """Fill ``store`` with the named seed and return it.

    ``seed`` is ``"demo"`` (the OAuth app plus three accounts full of realistic data) or ``"empty"``
    (the OAuth app plus two accounts without data). The result is deterministic for a fixed ``now``;
    ``now`` defaults to today 00:00 UTC so that a server started twice on one day serves the same
    data. A naive ``now`` is taken as UTC. Raises ``ValueError`` for an unknown seed or when the
    store already holds one of the seeded accounts.
    """
    if seed not in SEEDS:
        raise ValueError(f"unknown seed {seed!r}; expected one of {', '.join(SEEDS)}")
    if now is None:
        now = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    else:
        now = now.astimezone(UTC)
    specs = _DEMO_ACCOUNTS if seed == "demo" else _DEMO_ACCOUNTS[:_EMPTY_SEED_ACCOUNTS]
    for spec in specs:  # check before touching the store
        account_id, _ = _identity(spec.slug)
        if account_id in store.accounts:
            raise ValueError(f"the store already holds account {account_id} ({spec.name})")

    store.oauth_clients[DEMO_OAUTH_CLIENT_ID] = OAuthClient(
        client_id=DEMO_OAUTH_CLIENT_ID,
        client_secret=DEMO_OAUTH_CLIENT_SECRET,
        name=DEMO_OAUTH_APP_NAME,
        redirect_uris=list(DEMO_REDIRECT_URIS),
        scopes=list(KLAVIYO_SCOPES),
    )
    # The demo allocates hundreds of thousands of long-lived containers and nothing cyclic to
    # collect: cyclic GC passes over them would take about as long as the build itself.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for spec in specs:
            account = _new_account(spec, now)
            if seed == "demo":
                _DemoBuilder(account, spec, now).build()
            store.accounts[account.id] = account
    finally:
        if gc_was_enabled:
            gc.enable()
    return store


def _new_account(spec: _AccountSpec, now: datetime) -> Account:
    account_id, private_key = _identity(spec.slug)
    return Account(
        id=account_id,
        name=spec.name,
        private_api_key=private_key,
        public_api_key=account_id,  # Klaviyo's public key (site id) is the account id
        created=(now - timedelta(days=spec.age_days)).replace(hour=15, minute=4, second=11),
        timezone=spec.timezone,
        preferred_currency=spec.currency,
        industry=spec.industry,
        locale=spec.locale,
        test_account=False,
        website_url=spec.website_url,
        sender_email=spec.sender_email,
        sms_enabled=spec.sms_enabled,
        sms_countries=list(spec.sms_countries),
        default_opt_in_process=spec.default_opt_in,
        advanced_kdp=spec.advanced_kdp,
    )


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=int(value))


@dataclass(slots=True)
class _Member:
    """A profile plus the hidden traits that drive its simulated behaviour."""

    profile: Profile
    person: DemoPerson
    email_domain: str
    engagement: float  # 0..1; drives opens, clicks and browsing
    disengaged: bool  # no engagement in the last 90 days before the window
    last_engaged_days: float  # days before `now` of the last engagement (before the window)
    prior_orders: int  # orders before the event window
    last_order_days: float | None
    aov: float | None
    email_from: datetime | None  # can receive email marketing from …
    email_until: datetime | None  # … until (unsubscribe, suppression); None = still can
    sms_subscribed_at: datetime | None
    open_p: float = 0.0
    click_p: float = 0.0
    first_activity: datetime | None = None
    window_orders: int = 0
    window_order_total: float = 0.0
    last_order: datetime | None = None
    first_click: datetime | None = None
    last_view: datetime | None = None
    last_checkout: datetime | None = None
    last_event: datetime | None = None
    order_times: list[datetime] = field(default_factory=list)

    def ordered_between(self, start: datetime, end: datetime) -> bool:
        return any(start < t <= end for t in self.order_times)

    def can_email(self, at: datetime) -> bool:
        return (
            self.email_from is not None
            and self.email_from <= at
            and (self.email_until is None or at < self.email_until)
        )


@dataclass(frozen=True)
class _Send:
    """The attribution of one email send (a campaign, or a flow message)."""

    message: str  # $message: the campaign id, or the flow message id
    flow: str | None  # $flow: the flow id for flow sends, absent for campaigns
    name: str  # "Campaign Name": campaign name or flow message name
    subject: str
    cohort: str
    urls: tuple[str, ...]
    churn: bool = False  # may this send cause hard bounces and unsubscribes (campaigns do)


@dataclass
class _Cart:
    member: _Member
    at: datetime
    items: list[tuple[_Product, int]] = field(default_factory=list)

    @property
    def value(self) -> float:
        return round(sum(p.price * q for p, q in self.items), 2)


class _DemoBuilder:
    """Builds one demo account: profiles, lists, flows, campaigns, simulated events, segments."""

    def __init__(self, account: Account, spec: _AccountSpec, now: datetime) -> None:
        self.account = account
        self.spec = spec
        self.now = now
        self.window_start = now - EVENT_WINDOW
        self.rng = random.Random(f"klaviyo-sandbox/data/{spec.slug}")
        self.members: list[_Member] = []
        self.by_id: dict[str, _Member] = {}
        self.metric_ids: dict[str, str] = {}
        self.list_ids: dict[str, str] = {}
        self.segment_ids: dict[str, str] = {}
        self.flow_ids: dict[str, str] = {}
        self.flow_sends: dict[str, list[_Send]] = {}  # flow key -> its email sends, in order
        self.events: list[Event] = []
        self.abandoned: list[_Cart] = []
        self.clicks: list[tuple[_Member, datetime]] = []
        self.checkouts: list[tuple[_Member, datetime]] = []
        self._used_ids: set[str] = set()

    # ------------------------------------------------------------------ helpers

    def _short(self) -> str:
        while True:
            value = ids.short_id(self.rng)
            if value not in self._used_ids:
                self._used_ids.add(value)
                return value

    def _numeric(self) -> str:
        while True:
            value = ids.numeric_id(self.rng)
            if value not in self._used_ids:
                self._used_ids.add(value)
                return value

    def _ulid(self, at: datetime) -> str:
        return ids.ulid(self.rng, at)

    def _between(self, start: datetime, end: datetime) -> datetime:
        """A whole-second time uniformly in [start, end] (start when the range is empty)."""
        span = (end - start).total_seconds()
        return start + _seconds(self.rng.random() * span) if span > 0 else start

    def _event(self, metric: str, member: _Member, at: datetime, props: dict[str, Any]) -> bool:
        """Record an event if it falls inside the window; True when recorded."""
        if not (self.window_start <= at < self.now):
            return False
        rng = self.rng
        self.events.append(
            Event(
                id=ids.event_id(rng),
                metric_id=self.metric_ids[metric],
                profile_id=member.profile.id,
                datetime=at,
                uuid=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                event_properties=props,
            )
        )
        if member.last_event is None or at > member.last_event:
            member.last_event = at
        if metric == "viewed_product" and (member.last_view is None or at > member.last_view):
            member.last_view = at
        elif metric == "started_checkout" and (member.last_checkout is None or at > member.last_checkout):
            member.last_checkout = at
        if metric in ("opened_email", "clicked_email", "viewed_product", "placed_order") and (
            member.first_activity is None or at < member.first_activity
        ):
            member.first_activity = at
        return True

    # ------------------------------------------------------------------ the build

    def build(self) -> None:
        """Create everything, in the order the simulation needs it."""
        self._metrics()
        self._profiles()
        self._lists()
        self._trait_segments()
        self._flows()
        campaigns = self._campaigns()
        self._simulate(campaigns)
        self._event_segments()
        self._finish()

    def _metrics(self) -> None:
        account = self.account
        for key, name, integration in _METRICS:
            if key == "received_sms" and not self.spec.sms_enabled:
                continue
            created = account.created + _seconds(self.rng.uniform(3_600, 20 * 86_400))
            metric = Metric(
                id=self._short(), name=name, created=created, updated=created, integration=dict(integration)
            )
            account.metrics[metric.id] = metric
            self.metric_ids[key] = metric.id

    def _profiles(self) -> None:
        rng, now, spec, account = self.rng, self.now, self.spec, self.account
        categories = sorted({p.category for p in spec.products})
        sms_countries = set(spec.sms_countries) if spec.sms_enabled else set()
        for person in demo_people(spec.slug, spec.profiles):
            created = (now - person.signup_age).replace(microsecond=0)
            age_days = person.signup_age.total_seconds() / 86_400
            engagement = rng.betavariate(1.2, 2.2)
            disengaged = rng.random() < 0.27
            if disengaged:
                engagement *= 0.08
                last_engaged_days = rng.uniform(91, 420)
            else:
                last_engaged_days = min(rng.expovariate(1 / 18), 89.0)
            last_engaged_days = min(last_engaged_days, age_days)

            # Orders before the window: a long tail, only for people who were around to order.
            prior_orders = 0
            if age_days > 30:
                draw = rng.random()
                thresholds = (0.42, 0.68, 0.81, 0.88, 0.92, 0.95, 0.97)
                prior_orders = next((i for i, t in enumerate(thresholds) if draw < t), 7 + rng.randrange(6))
            last_order_days = rng.uniform(28, age_days) if prior_orders else None
            aov = round(spec.typical_order * rng.lognormvariate(0, 0.45), 2) if prior_orders else None

            profile = Profile(
                id=self._ulid(created),
                created=created,
                updated=self._between(created, now),
                email=person.email,
                phone_number=person.phone_number,
                external_id=person.external_id,
                first_name=person.first_name,
                last_name=person.last_name,
                locale=person.locale,
                location={
                    "city": person.city,
                    "country": person.country,
                    "region": person.region,
                    "zip": person.zip,
                    "timezone": person.timezone,
                },
            )
            member = _Member(
                profile=profile,
                person=person,
                email_domain=person.email.rsplit("@", 1)[1],
                engagement=engagement,
                disengaged=disengaged,
                last_engaged_days=last_engaged_days,
                prior_orders=prior_orders,
                last_order_days=last_order_days,
                aov=aov,
                email_from=None,
                email_until=None,
                sms_subscribed_at=None,
            )
            self._email_consent(member)
            if person.phone_number and person.country_code in sms_countries:
                self._sms_consent(member)
            member.open_p = min(0.95, 0.03 + 0.9 * engagement)
            member.click_p = 0.08 + 0.35 * engagement
            profile.properties = {
                "loyalty_tier": _loyalty_tier(prior_orders),
                "favorite_category": rng.choice(categories),
                "vip": prior_orders >= 5,
                "lifetime_orders": prior_orders,
                "accepts_marketing": profile.email_marketing.consent == "SUBSCRIBED",
            }
            if aov is not None and last_order_days is not None:
                profile.properties["average_order_value"] = aov
                last_order = now - timedelta(days=last_order_days)
                profile.properties["last_order_date"] = last_order.date().isoformat()
            account.add_profile(profile)
            self.members.append(member)
            self.by_id[profile.id] = member

    def _email_consent(self, member: _Member) -> None:
        rng = self.rng
        profile = member.profile
        created = profile.created
        consent_at = created + _seconds(rng.uniform(2, 600))
        draw = rng.random()
        consent = profile.email_marketing
        if draw < 0.12:
            # Bought or was imported without ever opting in to email marketing.
            consent.consent = "NEVER_SUBSCRIBED"
        else:
            method_draw = rng.random()
            if method_draw < 0.55:
                consent.method, consent.method_detail = "FORM", rng.choice(_FORM_NAMES)
                consent.double_optin = self.spec.newsletter_opt_in == "double_opt_in"
            elif method_draw < 0.80:
                consent.method, consent.method_detail = "CHECKOUT", "Shopify checkout"
                consent.double_optin = False
            elif method_draw < 0.92:
                consent.method, consent.method_detail = "API", None
                consent.custom_method_detail = "Quiz signup"
                consent.double_optin = False
            else:
                consent.method, consent.method_detail = "MANUAL_IMPORT", "CSV import"
                consent.double_optin = False
            consent.consent = "SUBSCRIBED"
            consent.consent_timestamp = consent_at
            consent.last_updated = consent_at
            member.email_from = consent_at
        # Churn before the event window is assigned here; churn inside it is simulated from campaign
        # sends, so that every recent unsubscribe or bounce has its event.
        churn = rng.random()
        churn_at = self._between(consent_at, self.window_start)
        if consent_at >= self.window_start:
            pass
        elif consent.consent == "SUBSCRIBED" and churn < 0.040:
            self._unsubscribe(member, churn_at, "UNSUBSCRIBE")
        elif consent.consent == "SUBSCRIBED" and churn < 0.044:
            self._unsubscribe(member, churn_at, "SPAM_COMPLAINT")
        elif churn < 0.059:
            self._suppress(member, churn_at, "HARD_BOUNCE")
        elif churn < 0.067:
            self._suppress(member, churn_at, "USER_SUPPRESSED")

    def _unsubscribe(self, member: _Member, at: datetime, reason: str) -> None:
        consent = member.profile.email_marketing
        consent.consent = "UNSUBSCRIBED"
        consent.last_updated = at
        if reason == "UNSUBSCRIBE":
            consent.method, consent.method_detail, consent.custom_method_detail = (
                "PREFERENCE_PAGE",
                "Unsubscribe link",
                None,
            )
        self._suppress(member, at, reason)

    def _suppress(self, member: _Member, at: datetime, reason: str) -> None:
        member.profile.suppressions.append(Suppression(reason=reason, timestamp=at))
        if member.email_from is not None and (member.email_until is None or at < member.email_until):
            member.email_until = at

    def _sms_consent(self, member: _Member) -> None:
        rng = self.rng
        profile = member.profile
        draw = rng.random()
        if draw >= 0.54:
            return  # NEVER_SUBSCRIBED (the default record)
        subscribed_at = profile.created + _seconds(rng.uniform(30, 3 * 86_400))
        subscribed_at = min(subscribed_at, self.now - timedelta(minutes=5))
        method = rng.choice(("FORM", "FORM", "CHECKOUT"))
        detail = rng.choice(_FORM_NAMES) if method == "FORM" else "Shopify checkout"
        profile.sms_marketing = ChannelConsent(
            consent="SUBSCRIBED",
            consent_timestamp=subscribed_at,
            last_updated=subscribed_at,
            method=method,
            method_detail=detail,
        )
        if rng.random() < 0.6:
            profile.sms_transactional = ChannelConsent(
                consent="SUBSCRIBED",
                consent_timestamp=subscribed_at,
                last_updated=subscribed_at,
                method=method,
                method_detail=detail,
            )
        if draw < 0.05:
            # Texted STOP later on.
            stopped = self._between(subscribed_at, self.now - timedelta(hours=1))
            profile.sms_marketing.consent = "UNSUBSCRIBED"
            profile.sms_marketing.last_updated = stopped
            profile.sms_marketing.method, profile.sms_marketing.method_detail = "INBOUND_MESSAGE", "STOP"
        else:
            member.sms_subscribed_at = subscribed_at

    # ------------------------------------------------------------------ lists and segments

    def _new_list(self, key: str, name: str, opt_in: str) -> KList:
        created = self.account.created + _seconds(self.rng.uniform(86_400, 30 * 86_400))
        group = KList(
            id=self._short(),
            name=name,
            created=created,
            updated=self._between(self.now - timedelta(days=20), self.now),
            opt_in_process=opt_in,
        )
        self.account.lists[group.id] = group
        self.list_ids[key] = group.id
        return group

    def _lists(self) -> None:
        rng, now = self.rng, self.now
        newsletter = self._new_list("newsletter", "Newsletter", self.spec.newsletter_opt_in)
        for m in self.members:
            consent = m.profile.email_marketing
            if consent.method in ("FORM", "CHECKOUT", "PREFERENCE_PAGE") and consent.consent_timestamp:
                # Unsubscribed people stay members (Klaviyo keeps them in the list, suppressed).
                newsletter.add_member(m.profile.id, consent.consent_timestamp)
            elif (
                consent.consent == "NEVER_SUBSCRIBED"
                and newsletter.opt_in_process == "double_opt_in"
                and now - m.profile.created < timedelta(days=3)
                and rng.random() < 0.5
            ):
                # Signed up through a form but has not clicked the confirmation link yet.
                newsletter.pending[m.profile.id] = m.profile.created
        if self.spec.sms_enabled:
            both = self._new_list("sms_email", "SMS + Email Subscribers", "single_opt_in")
            for m in self.members:
                email_consent = m.profile.email_marketing
                if m.sms_subscribed_at is not None:
                    both.add_member(m.profile.id, m.sms_subscribed_at)
                elif email_consent.method == "API" and email_consent.consent_timestamp:
                    both.add_member(m.profile.id, email_consent.consent_timestamp)
            vip = self._new_list("vip", "VIP", "single_opt_in")
            for m in self.members:
                if m.profile.properties["vip"]:
                    since = max(m.profile.created, now - timedelta(days=120))
                    vip.add_member(m.profile.id, self._between(since, now))
        else:
            customers = self._new_list("customers", "Customers", "single_opt_in")
            for m in self.members:
                if m.prior_orders and m.last_order_days is not None:
                    customers.add_member(m.profile.id, now - timedelta(days=m.last_order_days))

    def _new_segment(self, key: str, definition: dict[str, Any], starred: bool = False) -> Segment:
        created = self.account.created + _seconds(self.rng.uniform(5 * 86_400, 200 * 86_400))
        segment = Segment(
            id=self._short(),
            name=_SEGMENT_NAMES[key],
            created=created,
            updated=self._between(self.now - timedelta(days=30), self.now - timedelta(hours=2)),
            definition=definition,
            is_starred=starred,
        )
        self.account.segments[segment.id] = segment
        self.segment_ids[key] = segment.id
        return segment

    def _recent_join(self, m: _Member, weeks: float = 6) -> datetime:
        """A join time spread over the past weeks, never before the profile existed."""
        start = max(m.profile.created, self.now - timedelta(weeks=weeks))
        return self._between(start, self.now - timedelta(minutes=30))

    def _trait_segments(self) -> None:
        """Segments known before the simulation (campaigns target some of them)."""
        now = self.now
        metric = self.metric_ids
        engaged_90 = self._new_segment(
            "engaged_90",
            _definition(
                [
                    [
                        _metric_condition(metric["opened_email"], ">", 0, days=90),
                        _metric_condition(metric["clicked_email"], ">", 0, days=90),
                        _metric_condition(metric["placed_order"], ">", 0, days=90),
                    ]
                ],
            ),
            starred=True,
        )
        for m in self.members:
            if not m.disengaged:
                engaged_at = now - timedelta(days=m.last_engaged_days)
                engaged_at = max(m.profile.created, min(engaged_at, now - timedelta(hours=1)))
                engaged_90.add_member(m.profile.id, engaged_at)

        vip = self._new_segment(
            "vip",
            _definition(
                [[_property_condition("vip", {"type": "boolean", "operator": "equals", "value": True})]]
            ),
            starred=True,
        )
        for m in self.members:
            if m.profile.properties["vip"]:
                vip.add_member(m.profile.id, self._recent_join(m))

        high_aov_threshold = round(self.spec.typical_order * 1.6)
        high_aov = self._new_segment(
            "high_aov",
            _definition(
                [
                    [
                        _property_condition(
                            "average_order_value",
                            {
                                "type": "numeric",
                                "operator": "greater-than-or-equal",
                                "value": high_aov_threshold,
                            },
                        )
                    ]
                ]
            ),
        )
        for m in self.members:
            if m.aov is not None and m.aov >= high_aov_threshold:
                high_aov.add_member(m.profile.id, self._recent_join(m))

        if self.spec.sms_enabled:
            sms = self._new_segment(
                "sms_subscribers",
                _definition(
                    [
                        [
                            {
                                "type": "profile-marketing-consent",
                                "consent": {
                                    "channel": "sms",
                                    "can_receive_marketing": True,
                                    "consent_status": {"subscription": "subscribed", "filters": None},
                                },
                            }
                        ]
                    ]
                ),
            )
            for m in self.members:
                if m.sms_subscribed_at is not None:
                    sms.add_member(m.profile.id, m.sms_subscribed_at)

        newsletter = self.account.lists[self.list_ids["newsletter"]]
        new_subs = self._new_segment(
            "new_subscribers_30",
            _definition(
                [
                    [
                        {
                            "type": "profile-group-membership",
                            "is_member": True,
                            "group_ids": [newsletter.id],
                            "timeframe_filter": {
                                "type": "date",
                                "operator": "in-the-last",
                                "unit": "day",
                                "quantity": 30,
                            },
                        }
                    ]
                ]
            ),
        )
        for pid, joined in newsletter.members.items():
            if now - joined <= timedelta(days=30):
                new_subs.add_member(pid, joined)

    def _event_segments(self) -> None:
        """Segments that follow from the simulated events (and the lifetime figures they update)."""
        now, metric = self.now, self.metric_ids
        engaged_30 = self._new_segment(
            "engaged_30",
            _definition(
                [
                    [
                        _metric_condition(metric["opened_email"], ">", 0, days=30),
                        _metric_condition(metric["clicked_email"], ">", 0, days=30),
                        _metric_condition(metric["viewed_product"], ">", 0, days=30),
                        _metric_condition(metric["placed_order"], ">", 0, days=30),
                    ]
                ],
            ),
            starred=True,
        )
        engaged_90 = self.account.segments[self.segment_ids["engaged_90"]]
        for m in self.members:
            if m.first_activity is not None:
                engaged_30.add_member(m.profile.id, m.first_activity)
                engaged_90.add_member(m.profile.id, m.first_activity)  # no-op for existing members

        repeat = self._new_segment(
            "repeat_buyers", _definition([[_metric_condition(metric["placed_order"], ">=", 2, days=None)]])
        )
        lapsed = self._new_segment(
            "lapsed_180",
            _definition(
                [
                    [_metric_condition(metric["placed_order"], ">", 0, days=None)],
                    [_metric_condition(metric["placed_order"], "=", 0, days=180)],
                ]
            ),
        )
        for m in self.members:
            if m.prior_orders + m.window_orders >= 2:
                # Joined with the second order when that happened inside the window.
                joined = sorted(m.order_times)[1 - m.prior_orders] if m.prior_orders < 2 else None
                repeat.add_member(m.profile.id, joined or self._recent_join(m, weeks=8))
            if m.prior_orders and not m.window_orders and m.last_order_days and m.last_order_days > 180:
                lapsed_at = now - timedelta(days=m.last_order_days - 180)
                lapsed.add_member(m.profile.id, lapsed_at)

        no_purchase = self._new_segment(
            "clicked_no_purchase",
            _definition(
                [
                    [_metric_condition(metric["clicked_email"], ">", 0, days=30)],
                    [_metric_condition(metric["placed_order"], "=", 0, days=30)],
                ]
            ),
        )
        for m in self.members:
            if m.first_click is not None and not m.window_orders:
                no_purchase.add_member(m.profile.id, m.first_click)

        abandoned = self._new_segment(
            "abandoned_cart_7",
            _definition(
                [
                    [_metric_condition(metric["started_checkout"], ">", 0, days=7)],
                    [_metric_condition(metric["placed_order"], "=", 0, days=7)],
                ]
            ),
        )
        week_ago = now - timedelta(days=7)
        for member, at in self.checkouts:
            if at >= week_ago and (member.last_order is None or member.last_order < week_ago):
                abandoned.add_member(member.profile.id, at)

        browsed = self._new_segment(
            "browse_abandonment_14",
            _definition(
                [
                    [_metric_condition(metric["viewed_product"], ">", 0, days=14)],
                    [_metric_condition(metric["started_checkout"], "=", 0, days=14)],
                ]
            ),
        )
        two_weeks_ago = now - timedelta(days=14)
        for m in self.members:
            if (
                m.last_view is not None
                and m.last_view >= two_weeks_ago
                and (m.last_checkout is None or m.last_checkout < two_weeks_ago)
            ):
                browsed.add_member(m.profile.id, m.last_view)

        never = self._new_segment(
            "never_purchased", _definition([[_metric_condition(metric["placed_order"], "=", 0, days=None)]])
        )
        for m in self.members:
            if not m.prior_orders and not m.window_orders:
                never.add_member(m.profile.id, m.profile.created)

    # ------------------------------------------------------------------ flows

    def _flows(self) -> None:
        brand, spec = self.spec.name, self.spec
        first = spec.products[0]
        plans: list[tuple[str, str, str, str, bool, list[tuple[Any, ...]]]] = [
            (
                "welcome",
                "Welcome Series",
                "Added to List",
                "live",
                False,
                [
                    (
                        "email",
                        "Welcome Series Email #1",
                        f"Welcome to {brand}!",
                        "Here's 10% off your first order.",
                    ),
                    ("delay", "days", 2),
                    (
                        "email",
                        "Welcome Series Email #2",
                        f"The story behind {brand}",
                        "Why we make what we make.",
                    ),
                    ("delay", "days", 3),
                    (
                        "email",
                        "Welcome Series Email #3",
                        "Your 10% off expires soon",
                        "Use it before it's gone.",
                    ),
                ],
            ),
            (
                "abandoned_cart",
                "Abandoned Cart",
                "Metric",
                "live",
                False,
                [
                    ("delay", "hours", 4),
                    (
                        "email",
                        "Abandoned Cart Email #1",
                        "You left something behind",
                        "Your cart is saved and waiting for you.",
                    ),
                    ("delay", "days", 1),
                    (
                        "email",
                        "Abandoned Cart Email #2",
                        "Still thinking it over?",
                        "Free shipping on your saved cart, today only.",
                    ),
                ],
            ),
            (
                "back_in_stock",
                "Back in Stock",
                "Metric",
                "live",
                False,
                [
                    (
                        "email",
                        "Back in Stock Email #1",
                        "It's back! Your item is in stock",
                        f"Grab it before it sells out again, like the {first.name}.",
                    ),
                ],
            ),
            (
                "post_purchase",
                "Post-Purchase Thank You",
                "Metric",
                "draft",
                False,
                [
                    ("delay", "days", 3),
                    (
                        "email",
                        "Post-Purchase Email #1",
                        "Thanks for your order!",
                        "How is everything so far?",
                    ),
                ],
            ),
            (
                "winback",
                "Customer Winback (2024)",
                "Metric",
                "manual",
                True,
                [
                    ("email", "Winback Email #1", "We miss you", "Here's 15% off to come back."),
                ],
            ),
        ]
        for key, name, trigger_type, status, archived, steps in plans:
            self._flow(key, name, trigger_type, status, archived, steps)

    def _flow(
        self,
        key: str,
        name: str,
        trigger_type: str,
        status: str,
        archived: bool,
        steps: list[tuple[Any, ...]],
    ) -> None:
        rng, account, spec = self.rng, self.account, self.spec
        created = account.created + _seconds(rng.uniform(10 * 86_400, 300 * 86_400))
        updated = self._between(max(created, self.now - timedelta(days=60)), self.now - timedelta(days=29))
        flow = Flow(
            id=self._short(),
            name=name,
            status=status,
            archived=archived,
            created=created,
            updated=updated,
            trigger_type=trigger_type,
        )
        action_status = status  # actions follow the flow (live, draft or manual)
        actions: list[FlowAction] = []
        sends: list[_Send] = []
        for step in steps:
            action = FlowAction(
                id=self._numeric(),
                flow_id=flow.id,
                action_type="",
                status=action_status,
                created=created,
                updated=updated,
            )
            if step[0] == "delay":
                _, unit, value = step
                action.action_type = "TIME_DELAY"
                action.definition = {
                    "id": action.id,
                    "type": "time-delay",
                    "data": {
                        "unit": unit,
                        "value": value,
                        "secondary_value": None,
                        "timezone": "profile",
                        "delay_until_time": None,
                        "delay_until_weekdays": None,
                    },
                }
            else:
                _, message_name, subject, preview = step
                message = FlowMessage(
                    id=self._short(),
                    action_id=action.id,
                    name=message_name,
                    channel="email",
                    created=created,
                    updated=updated,
                    definition={
                        "channel": "email",
                        "content": {
                            "subject": subject,
                            "preview_text": preview,
                            "from_email": spec.sender_email,
                            "from_label": spec.name,
                        },
                    },
                )
                account.flow_messages[message.id] = message
                action.message_ids.append(message.id)
                action.action_type = "SEND_EMAIL"
                action.definition = {
                    "id": action.id,
                    "type": "send-email",
                    "data": {
                        "message": {
                            "from_email": spec.sender_email,
                            "from_label": spec.name,
                            "reply_to_email": None,
                            "cc_email": None,
                            "bcc_email": None,
                            "subject_line": subject,
                            "preview_text": preview,
                            "template_id": self._short(),
                            "smart_sending_enabled": True,
                            "transactional": False,
                            "add_tracking_params": True,
                            "custom_tracking_params": None,
                            "additional_filters": None,
                            "name": message_name,
                            "id": message.id,
                        },
                        "status": action_status,
                    },
                }
                slug = _slug(name)
                sends.append(
                    _Send(
                        message=message.id,
                        flow=flow.id,
                        name=message_name,
                        subject=subject,
                        cohort="",
                        urls=(
                            f"{spec.website_url}/cart?utm_source=klaviyo&utm_medium=email&utm_campaign={slug}",
                            f"{spec.website_url}/collections/all?utm_source=klaviyo&utm_medium=email"
                            f"&utm_campaign={slug}",
                            f"{spec.website_url}/?utm_source=klaviyo&utm_medium=email&utm_campaign={slug}",
                        ),
                    )
                )
            actions.append(action)
        for action, following in zip(actions, [*actions[1:], None], strict=True):
            action.definition["links"] = {"next": following.id if following else None}
            account.flow_actions[action.id] = action
            flow.action_ids.append(action.id)
        account.flows[flow.id] = flow
        self.flow_ids[key] = flow.id
        self.flow_sends[key] = sends

    # ------------------------------------------------------------------ campaigns

    def _campaigns(self) -> list[tuple[Campaign, _CampaignPlan]]:
        rng, now, spec, account = self.rng, self.now, self.spec, self.account
        made: list[tuple[Campaign, _CampaignPlan]] = []
        for plan in spec.campaigns:
            if plan.channel == "sms" and not spec.sms_enabled:
                continue
            if plan.days_from_now is None:
                created = now - _seconds(rng.uniform(2 * 86_400, 9 * 86_400))
                send_time = scheduled_at = None
                updated = self._between(created, now - timedelta(hours=3))
            else:
                # Round to the quarter hour, as people schedule campaigns.
                raw = now + timedelta(days=plan.days_from_now)
                send_time = raw.replace(minute=(raw.minute // 15) * 15, second=0, microsecond=0)
                created = send_time - _seconds(rng.uniform(3 * 86_400, 10 * 86_400))
                created = min(created, now - _seconds(rng.uniform(86_400, 3 * 86_400)))  # scheduled ones
                scheduled_at = send_time - _seconds(rng.uniform(3_600, 2 * 86_400))
                scheduled_at = min(scheduled_at, now - timedelta(hours=2))
                updated = send_time + timedelta(minutes=42) if plan.status == "Sent" else scheduled_at
            included = [self._audience(key) for key in plan.audiences]
            excluded = [self._audience(key) for key in plan.excluded]
            campaign = Campaign(
                id=self._ulid(created),
                name=plan.name,
                status=plan.status,
                archived=False,
                channel=plan.channel,
                created_at=created,
                updated_at=updated,
                scheduled_at=scheduled_at,
                send_time=send_time,
                included_audiences=[a for a in included if a],
                excluded_audiences=[a for a in excluded if a],
            )
            if plan.channel == "email":
                content: dict[str, Any] = {
                    "subject": plan.subject,
                    "preview_text": plan.preview_text,
                    "from_email": spec.sender_email,
                    "from_label": spec.name,
                    "reply_to_email": spec.sender_email,
                    "cc_email": None,
                    "bcc_email": None,
                }
            else:
                content = {"body": plan.sms_body, "media_url": None}
            message = CampaignMessage(
                id=self._ulid(created),
                campaign_id=campaign.id,
                channel=plan.channel,
                label=plan.name,
                created_at=created,
                updated_at=updated,
                content=content,
            )
            campaign.message_ids.append(message.id)
            account.campaigns[campaign.id] = campaign
            account.campaign_messages[message.id] = message
            made.append((campaign, plan))
        return made

    def _audience(self, key: str) -> str | None:
        kind, name = key.split(":", 1)
        return (self.list_ids if kind == "list" else self.segment_ids).get(name)

    # ------------------------------------------------------------------ the simulation

    def _simulate(self, campaigns: list[tuple[Campaign, _CampaignPlan]]) -> None:
        # Order matters: organic shopping first, then campaigns in send order (they may churn
        # recipients), then the flows that react to what happened (abandoned carts last, as every
        # other step can leave a cart behind).
        self._organic_sessions()
        for campaign, plan in sorted(campaigns, key=lambda cp: cp[0].send_time or self.now):
            if plan.status == "Sent" and campaign.send_time is not None:
                self._send_campaign(campaign, plan)
        self._welcome_flow()
        self._back_in_stock_flow()
        self._abandoned_cart_flow()

    def _organic_sessions(self) -> None:
        rng = self.rng
        for m in self.members:
            rate = 0.04 + 0.9 * m.engagement
            start = max(self.window_start, m.profile.created)
            for _ in range(_poisson(rng, rate)):
                self._session(m, self._between(start, self.now), boosted=False)

    def _session(self, m: _Member, at: datetime, *, boosted: bool, products: Sequence[_Product] = ()) -> None:
        """Browse a few products; maybe start a checkout; maybe order (else leave a cart behind)."""
        rng, spec = self.rng, self.spec
        favorite = m.profile.properties.get("favorite_category")
        viewed: list[_Product] = list(products)
        while not viewed or (len(viewed) < 3 and rng.random() < 0.45):
            pool = [p for p in spec.products if p.category == favorite] if rng.random() < 0.5 else []
            viewed.append(rng.choice(pool or spec.products))
        t = at
        for product in viewed:
            self._event("viewed_product", m, t, self._product_props(product))
            t += _seconds(rng.uniform(20, 240))
        if rng.random() >= (0.45 if boosted else 0.3):
            return
        cart = _Cart(m, t + _seconds(rng.uniform(60, 600)))
        for product in dict.fromkeys(viewed):
            if not cart.items or rng.random() < 0.35:
                cart.items.append((product, 1 if rng.random() < 0.85 else 2))
        checkout_props = {
            "$event_id": f"{rng.getrandbits(64):016x}",
            "$value": cart.value,
            "Items": [self._item(p, q) for p, q in cart.items],
            "ItemNames": [p.name for p, _ in cart.items],
            "Item Count": sum(q for _, q in cart.items),
            "Categories": sorted({p.category for p, _ in cart.items}),
            "Checkout URL": f"{spec.website_url}/checkouts/{rng.getrandbits(64):016x}",
        }
        if not self._event("started_checkout", m, cart.at, checkout_props):
            return
        self.checkouts.append((m, cart.at))
        if rng.random() < (0.6 if boosted else 0.55):
            self._order(cart, cart.at + _seconds(rng.uniform(60, 1_800)))
        else:
            self.abandoned.append(cart)

    def _product_props(self, product: _Product) -> dict[str, Any]:
        url = f"{self.spec.website_url}/products/{product.handle}"
        return {
            "ProductName": product.name,
            "ProductID": product.product_id,
            "SKU": product.sku,
            "Categories": [product.category],
            "URL": url,
            "ImageURL": _image_url(product),
            "Price": product.price,
            "$value": product.price,
        }

    def _item(self, product: _Product, quantity: int) -> dict[str, Any]:
        return {
            "ProductID": product.product_id,
            "SKU": product.sku,
            "ProductName": product.name,
            "Quantity": quantity,
            "ItemPrice": product.price,
            "RowTotal": round(product.price * quantity, 2),
            "ProductURL": f"{self.spec.website_url}/products/{product.handle}",
            "ImageURL": _image_url(product),
            "Categories": [product.category],
        }

    def _order(self, cart: _Cart, at: datetime) -> bool:
        props = {
            # "$event_id"/"OrderId" are filled in time order by _finish(), like Shopify order numbers.
            "$event_id": "",
            "$value": cart.value,
            "OrderId": "",
            "Items": [self._item(p, q) for p, q in cart.items],
            "ItemNames": [p.name for p, _ in cart.items],
            "Item Count": sum(q for _, q in cart.items),
            "Categories": sorted({p.category for p, _ in cart.items}),
            "Discount Codes": [],
            "Source Name": "web",
        }
        if not self._event("placed_order", cart.member, at, props):
            return False
        m = cart.member
        m.window_orders += 1
        m.window_order_total += cart.value
        m.order_times.append(at)
        if m.last_order is None or at > m.last_order:
            m.last_order = at
        return True

    def _send_email(self, m: _Member, at: datetime, send: _Send) -> datetime | None:
        """One email to one profile: Received, maybe Opened, maybe Clicked. Returns the click time."""
        if not m.can_email(at) or at >= self.now:
            return None
        rng = self.rng
        base: dict[str, Any] = {}
        if send.flow is not None:
            base["$flow"] = send.flow
        base.update(
            {
                "$message": send.message,
                "Campaign Name": send.name,
                "Subject": send.subject,
                "$message_send_cohort": send.cohort or f"{send.message}:{at.date().isoformat()}",
                "Email Domain": m.email_domain,
            }
        )
        delivered = at + _seconds(rng.uniform(4, 900))
        if send.churn and rng.random() < 0.003:
            if self._event("bounced_email", m, delivered, {**base, "Bounce Type": "hard"}):
                self._suppress(m, delivered, "HARD_BOUNCE")
            return None
        if not self._event("received_email", m, delivered, dict(base)) or rng.random() >= m.open_p:
            return None
        client = rng.choice(_EMAIL_CLIENTS)
        opened = delivered + _seconds(min(rng.expovariate(1 / 10_800), 5 * 86_400))
        if not self._event("opened_email", m, opened, {**base, **client}):
            return None
        if send.churn and rng.random() < 0.006:
            left = opened + _seconds(rng.uniform(20, 900))
            if self._event("unsubscribed", m, left, dict(base)):
                self._unsubscribe(m, left, "UNSUBSCRIBE")
                m.profile.updated = max(m.profile.updated, left)
            return None
        if rng.random() >= m.click_p:
            return None
        clicked = opened + _seconds(rng.uniform(3, 600))
        if not self._event("clicked_email", m, clicked, {**base, **client, "URL": rng.choice(send.urls)}):
            return None
        if m.first_click is None or clicked < m.first_click:
            m.first_click = clicked
        return clicked

    def _send_campaign(self, campaign: Campaign, plan: _CampaignPlan) -> None:
        rng, account = self.rng, self.account
        assert campaign.send_time is not None
        send_time = campaign.send_time
        excluded: set[str] = set()
        for group_id in campaign.excluded_audiences:
            group = account.group(group_id)
            if group is not None:
                excluded.update(group.members)
        recipients: dict[str, None] = {}
        for group_id in campaign.included_audiences:
            group = account.group(group_id)
            if group is None:
                continue
            is_list = group_id in account.lists
            for pid, joined in group.members.items():
                # List members join at a known time; segment membership is taken as of now.
                if pid not in excluded and (not is_list or joined <= send_time):
                    recipients[pid] = None
        cohort = f"{campaign.id}:{int(send_time.timestamp())}"
        if plan.channel == "sms":
            props = {
                "$message": campaign.id,
                "Campaign Name": campaign.name,
                "Message Body": plan.sms_body,
                "$message_send_cohort": cohort,
            }
            for pid in recipients:
                m = self.by_id[pid]
                if m.sms_subscribed_at is not None and m.sms_subscribed_at <= send_time:
                    self._event("received_sms", m, send_time + _seconds(rng.uniform(2, 600)), dict(props))
            return
        slug = _slug(campaign.name)
        base_url = self.spec.website_url
        utm = f"utm_source=klaviyo&utm_medium=campaign&utm_campaign={slug}"
        send = _Send(
            message=campaign.id,
            flow=None,
            name=campaign.name,
            subject=plan.subject,
            cohort=cohort,
            churn=True,
            urls=(
                f"{base_url}/collections/{plan.collection}?{utm}",
                f"{base_url}/?{utm}",
                f"{base_url}/products/{rng.choice(self.spec.products).handle}?{utm}",
            ),
        )
        personalised = "{first_name}" in plan.subject
        for pid in recipients:
            m = self.by_id[pid]
            if personalised:  # the Subject property carries the rendered subject line
                subject = plan.subject.replace("{first_name}", m.profile.first_name or "there")
                clicked = self._send_email(m, send_time, dataclasses.replace(send, subject=subject))
            else:
                clicked = self._send_email(m, send_time, send)
            if clicked is not None and rng.random() < 0.05 + 0.25 * m.engagement:
                self._session(m, clicked + _seconds(rng.uniform(5, 120)), boosted=True)

    def _welcome_flow(self) -> None:
        rng = self.rng
        sends = self.flow_sends["welcome"]
        offsets = (timedelta(0), timedelta(days=2), timedelta(days=5))  # from the flow's time delays
        newsletter = self.account.lists[self.list_ids["newsletter"]]
        earliest = self.window_start - timedelta(days=6)
        for pid, joined in newsletter.members.items():
            if joined < earliest:
                continue
            m = self.by_id[pid]
            self._event("subscribed_to_list", m, joined, {"List": newsletter.name})
            start = joined + _seconds(rng.uniform(60, 300))
            for send, offset in zip(sends, offsets, strict=True):
                clicked = self._send_email(m, start + offset, send)
                if clicked is not None and rng.random() < 0.08 + 0.25 * m.engagement:
                    self._session(m, clicked + _seconds(rng.uniform(5, 120)), boosted=True)
        if "sms_email" in self.list_ids:
            both = self.account.lists[self.list_ids["sms_email"]]
            for pid, joined in both.members.items():
                if joined >= self.window_start:
                    self._event("subscribed_to_list", self.by_id[pid], joined, {"List": both.name})

    def _back_in_stock_flow(self) -> None:
        rng, spec = self.rng, self.spec
        send = self.flow_sends["back_in_stock"][0]
        earliest = self.window_start - timedelta(days=14)
        for m in self.members:
            if rng.random() >= 0.025:
                continue
            product = rng.choice(spec.products)
            asked = self._between(max(earliest, m.profile.created), self.now)
            self._event(
                "subscribed_to_back_in_stock",
                m,
                asked,
                {
                    "ProductName": product.name,
                    "ProductID": product.product_id,
                    "SKU": product.sku,
                    "Channel": "email",
                    "URL": f"{spec.website_url}/products/{product.handle}",
                },
            )
            restocked = asked + _seconds(rng.uniform(86_400, 14 * 86_400))
            clicked = self._send_email(m, restocked, send)
            if clicked is not None and rng.random() < 0.3:
                self._session(m, clicked + _seconds(rng.uniform(5, 120)), boosted=True, products=(product,))

    def _abandoned_cart_flow(self) -> None:
        rng = self.rng
        first, second = self.flow_sends["abandoned_cart"]
        for cart in sorted(self.abandoned, key=lambda c: c.at):
            m = cart.member
            send_at = cart.at + timedelta(hours=4)
            for send, at in ((first, send_at), (second, send_at + timedelta(days=1))):
                if m.ordered_between(cart.at, at):
                    break  # bought in the meantime: the flow's filter lets them exit
                clicked = self._send_email(m, at, send)
                if clicked is not None and rng.random() < 0.35:
                    self._order(cart, clicked + _seconds(rng.uniform(60, 1_200)))
                    break

    # ------------------------------------------------------------------ finishing touches

    def _finish(self) -> None:
        account, rng = self.account, self.rng
        self.events.sort(key=lambda e: (e.datetime, e.id))
        order_number = 1000 + rng.randrange(2_000, 40_000)
        base_order_id = rng.randrange(5_100_000_000_000, 5_900_000_000_000)
        placed_order = self.metric_ids["placed_order"]
        for event in self.events:
            while event.id in account.events:  # 62**11 ids: a clash is all but impossible, but be exact
                event.id = ids.event_id(rng)
            if event.metric_id == placed_order:
                order_number += 1
                order_id = str(base_order_id + order_number * 7)
                event.event_properties["$event_id"] = order_id
                event.event_properties["OrderId"] = order_id
                event.event_properties["OrderNumber"] = f"#{order_number}"
            account.events[event.id] = event
        for m in self.members:
            profile = m.profile
            profile.last_event_date = m.last_event
            if m.window_orders:
                total_orders = m.prior_orders + m.window_orders
                prior_total = (m.aov or 0.0) * m.prior_orders
                profile.properties["lifetime_orders"] = total_orders
                average = (prior_total + m.window_order_total) / total_orders
                profile.properties["average_order_value"] = round(average, 2)
                profile.properties["loyalty_tier"] = _loyalty_tier(total_orders)
                assert m.last_order is not None
                profile.properties["last_order_date"] = m.last_order.date().isoformat()
            changes = [
                profile.updated,
                profile.email_marketing.last_updated,
                profile.sms_marketing.last_updated,
            ]
            profile.updated = min(max(c for c in changes if c is not None), self.now)


# ---------------------------------------------------------------------------- small helpers


def _loyalty_tier(orders: int) -> str:
    if orders >= 7:
        return "Platinum"
    if orders >= 4:
        return "Gold"
    if orders >= 2:
        return "Silver"
    return "Bronze"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _image_url(product: _Product) -> str:
    return f"https://cdn.shopify.com/s/files/1/{product.product_id[:4]}/products/{product.handle}.jpg"


def _poisson(rng: random.Random, rate: float) -> int:
    """A Poisson draw (Knuth's method; the rates here are small)."""
    limit, k, p = math.exp(-rate), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


_OPERATORS = {">": "greater-than", ">=": "greater-than-or-equal", "=": "equals"}


def _metric_condition(metric_id: str, op: str, value: int, *, days: int | None) -> dict[str, Any]:
    """A ``profile-metric`` condition as in Klaviyo's segment definitions."""
    timeframe: dict[str, Any] = (
        {"type": "date", "operator": "alltime"}
        if days is None
        else {"type": "date", "operator": "in-the-last", "unit": "day", "quantity": days}
    )
    return {
        "type": "profile-metric",
        "metric_id": metric_id,
        "measurement": "count",
        "measurement_filter": {"type": "numeric", "operator": _OPERATORS[op], "value": value},
        "timeframe_filter": timeframe,
        "metric_filters": None,
    }


def _property_condition(name: str, value_filter: dict[str, Any]) -> dict[str, Any]:
    return {"type": "profile-property", "property": f"properties['{name}']", "filter": value_filter}


def _definition(groups: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Conditions within a group are OR-ed, groups are AND-ed (Klaviyo's semantics)."""
    return {"condition_groups": [{"conditions": conditions} for conditions in groups]}


# ---------------------------------------------------------------------------- summary


def describe_store(store: Store) -> list[dict[str, Any]]:
    """A summary per account (ids, keys and counts), for the CLI to print."""
    return [
        {
            "id": account.id,
            "name": account.name,
            "private_api_key": account.private_api_key,
            "public_api_key": account.public_api_key,
            "sms_enabled": account.sms_enabled,
            "advanced_kdp": account.advanced_kdp,
            "profiles": len(account.profiles),
            "lists": len(account.lists),
            "segments": len(account.segments),
            "metrics": len(account.metrics),
            "flows": len(account.flows),
            "campaigns": len(account.campaigns),
            "events": len(account.events),
        }
        for account in store.accounts.values()
    ]
