"""Realistic documents without end: manuals, FAQs, notices, itineraries... with fresh values.

SQuAD's 1,409 training paragraphs are remembered rather than read. This generator writes short
everyday documents in natural sentences whose VALUES (names, dates, times, prices, quantities,
places, codes, yes/no conditions, lists, reasons) are drawn fresh for every document, so an
answer can only come from reading the document, never from memory::

    >>> import numpy as np
    >>> doc = realistic_document(np.random.default_rng(0), n_questions=2)
    >>> doc.source, len(doc.qas) > 0
    ('realistic', True)

Every document kind (:data:`KINDS`) has a subject (a product, a clinic, a trip...), facts about
it, and sentences without facts. Each fact attribute has several statement templates and several
question templates, the latter including paraphrases that share few words with the statement.

Held-out split (the evaluation set is never trained on, and is not only another seed):

* whole document kinds (:data:`HELDOUT_KINDS`) never appear in training;
* in every other kind, every third statement template, question template and value format
  (indices 2, 5, ...) is held out: ``part="train"`` never uses them and ``part="heldout"`` uses
  only them, so held-out questions ask about facts phrased in ways training never saw.

Seeded: the same ``numpy`` generator state gives the same document.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .data import QA, TrainDoc
from .heldout import PARTS
from .heldout import part_of as _part_of
from .realistic_more import MORE_PHRASINGS

Rng = np.random.Generator


def _pick(rng: Rng, xs: Sequence[str]) -> str:
    return xs[int(rng.integers(len(xs)))]


# ---------------------------------------------------------------------------------------------
# values, drawn fresh; each generator takes the part so that value FORMATS can be held out
_FIRST = ("Amara Bastian Cleo Dario Elif Farid Greta Hugo Ines Jonas Kaia Lorenzo Mina Nils Oona Priya "
          "Quentin Rosa Soren Tamsin Umar Vera Wendell Xenia Yusuf Zora Adele Bruno Celine Dev Esme Felix "
          "Hana Ivo Juno Kofi Lena Malik Nadia Otto Pilar Rhea Silas Talia Viktor Wren Yara Ansel Beatrix "
          "Cyrus Delphine Emil Freya Gideon Hedda Ilias Jasper").split()
_LAST = ("Abara Bergstrom Calloway Duval Eskildsen Fontaine Grieve Halloran Ibarra Jansen Kowalczyk "
         "Laurent Madsen Nakamura Oyelaran Pellegrini Quist Rowntree Szabo Thorne Ulloa Vance Whitfield "
         "Yilmaz Zeller Achterberg Blom Castellanos Dunmore Engel Falk Garrow Hirano Iversen Jaramillo "
         "Kessler Lindahl Marchetti Norgaard Ostrowski Pratt Renner Sandoval Tovar Umberg Voss Wexler").split()
_STREET = "Maple|Harbor|Linden|Quarry|Willow|Station|Mill|Orchard|Castle|Fern|Beacon|Juniper|Kings|Tanner".split("|")
_STREET_KIND = "Street|Road|Avenue|Lane|Way".split("|")
_TOWN = ("Ashford Brinmoor Caldwell Dunmere Eastwick Fallbrook Glenrock Hollin Ivybridge Kelso Larkfield "
         "Marlow Northam Oakridge Pennick Redvale Stanmore Thornbury Upwell Westerly").split()
_CITY = ("Lisbon Oslo Nairobi Quito Hanoi Krakow Adelaide Tbilisi Montevideo Reykjavik Dakar Porto Bergen "
         "Cusco Tallinn Valencia Ljubljana Seville Antwerp Gdansk Turin Leeds Graz Lyon Bilbao").split()
_BRAND_A = "Aur Bel Cor Dav Ember Flor Gal Hal Iri Jun Kel Lum Mer Nov Orb Pel Quin Riv Sol Tor Vel Wyn Zep".split()
_BRAND_B = "ora ix ane elle is on ara eon ia ent ova ar ine um".split()
_WEEKDAY = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTH = "January February March April May June July August September October November December".split()
_COLOUR = "grey|white|navy blue|forest green|red|yellow|black|orange|silver|purple".split("|")
_ROOM_WORD = "Room|Hall|Studio|Suite|Lab".split("|")
_DEPT = ("facilities|accounts|the front desk|customer support|human resources|the IT helpdesk|"
         "the site office|reception|the events team|the warehouse").split("|")
_REASON = ("a burst water pipe|roof repairs|a staff training day|a power cut|flooding on the access road|"
           "a software upgrade|a public holiday|a fire inspection|low bookings|a supplier delay|"
           "new safety rules|a broken lift|an electrical fault|a change of owner").split("|")
_ITEMS = ("a charging cable|a spare filter|two brushes|a carry case|a quick-start guide|a wall bracket|"
          "a remote control|three batteries|a cleaning cloth|a measuring cup|a spare lid|an adapter plug|"
          "a pair of gloves|a drip tray|a storage bag").split("|")
_FOOD = ("ginger|lentils|rice|spinach|feta|lemon|garlic|basil|oats|honey|chickpeas|paprika|mushrooms|"
         "butter|cinnamon|almonds").split("|")


def person(rng: Rng, part: str) -> str:
    return f"{_pick(rng, _FIRST)} {_pick(rng, _LAST)}"


def brand(rng: Rng, part: str) -> str:
    return _pick(rng, _BRAND_A) + _pick(rng, _BRAND_B)


def product(rng: Rng, part: str) -> str:
    letter = "ABCDEFGHKLMNPRSTVX"[int(rng.integers(18))]
    return f"{brand(rng, part)} {letter}{int(rng.integers(1, 10))}"


def date(rng: Rng, part: str) -> str:
    m, d = _pick(rng, _MONTH), int(rng.integers(1, 29))
    year = int(rng.integers(2024, 2031))
    forms = [f"{m} {d}", f"{d} {m}", f"{m} {d}, {year}", f"{_pick(rng, _WEEKDAY)}, {m} {d}",
             f"{d} {m} {year}", f"{year}-{_MONTH.index(m) + 1:02d}-{d:02d}"]
    return _pick(rng, _part_of(forms, part))


def time_of_day(rng: Rng, part: str) -> str:
    h, m = int(rng.integers(6, 22)), int(rng.choice([0, 15, 30, 45]))
    h12 = (h - 1) % 12 + 1
    ampm = "am" if h < 12 else "pm"
    forms = [f"{h12}:{m:02d} {ampm}" if m else f"{h12} {ampm}", f"{h:02d}:{m:02d}", f"{h12}.{m:02d} {ampm}"]
    return _pick(rng, _part_of(forms, part))


def hours(rng: Rng, part: str) -> str:
    a = int(rng.integers(6, 11))
    b = int(rng.integers(a + 6, min(a + 13, 23)))
    forms = [f"{a} am to {(b - 1) % 12 + 1} pm", f"{a:02d}:00 to {b:02d}:00", f"{a} am until {(b - 1) % 12 + 1} pm"]
    return _pick(rng, _part_of(forms, part))


def _unit_amount(rng: Rng, part: str, units: Sequence[tuple[int, int, str]]) -> str:
    lo, hi, unit = units[int(rng.integers(len(units)))]
    n = int(rng.integers(lo, hi + 1))
    return f"{n} {unit if n != 1 else unit.rstrip('s')}"


def short_duration(rng: Rng, part: str) -> str:
    return _unit_amount(rng, part, [(2, 59, "minutes"), (2, 9, "hours")])


def minutes(rng: Rng, part: str) -> str:
    return _unit_amount(rng, part, [(10, 95, "minutes")])


def days_or_weeks(rng: Rng, part: str) -> str:
    return _unit_amount(rng, part, [(2, 60, "days"), (2, 8, "weeks")])


def long_duration(rng: Rng, part: str) -> str:
    return _unit_amount(rng, part, [(2, 11, "months"), (1, 6, "years"), (6, 52, "weeks")])


def price(rng: Rng, part: str) -> str:
    n = int(rng.integers(3, 900))
    cents = int(rng.choice([0, 0, 50, 95, 99, 25]))
    amount = f"{n}.{cents:02d}" if cents else str(n)
    forms = [f"${amount}", f"€{amount}", f"{amount} euros", f"£{amount}", f"{amount} dollars", f"{amount} pounds"]
    return _pick(rng, _part_of(forms, part))


def small_count(rng: Rng, part: str) -> str:
    return str(int(rng.integers(2, 40)))


def big_count(rng: Rng, part: str) -> str:
    n = int(rng.integers(60, 5000))
    forms = [str(n), f"{n:,}", f"about {n}"]
    return _pick(rng, _part_of(forms, part))


def percent(rng: Rng, part: str) -> str:
    n = int(rng.integers(3, 60))
    forms = [f"{n}%", f"{n} percent", f"{n} per cent"]
    return _pick(rng, _part_of(forms, part))


def weight(rng: Rng, part: str) -> str:
    return _unit_amount(rng, part, [(120, 950, "grams"), (2, 40, "kilograms"), (3, 60, "pounds")])


def volume(rng: Rng, part: str) -> str:
    n = int(rng.integers(2, 40)) / 10 if rng.random() < 0.5 else int(rng.integers(150, 950))
    return f"{n:g} litres" if isinstance(n, float) else f"{n} millilitres"


def distance(rng: Rng, part: str) -> str:
    return _unit_amount(rng, part, [(2, 90, "kilometres"), (100, 900, "metres"), (2, 40, "miles")])


def temperature(rng: Rng, part: str) -> str:
    n = int(rng.integers(4, 24)) * 5
    forms = [f"{n} degrees Celsius", f"{n}°C", f"{n} degrees"]
    return _pick(rng, _part_of(forms, part))


def room(rng: Rng, part: str) -> str:
    forms = [f"{_pick(rng, _ROOM_WORD)} {int(rng.integers(1, 9))}{'ABCD'[int(rng.integers(4))]}",
             f"{_pick(rng, _ROOM_WORD)} {int(rng.integers(100, 600))}",
             f"the {_pick(rng, ['first', 'second', 'third', 'fourth'])} floor"]
    return _pick(rng, _part_of(forms, part))


def address(rng: Rng, part: str) -> str:
    return f"{int(rng.integers(2, 300))} {_pick(rng, _STREET)} {_pick(rng, _STREET_KIND)}"


def phone(rng: Rng, part: str) -> str:
    digits = "".join(str(int(rng.integers(10))) for _ in range(7))
    forms = [f"555-{digits[:4]}", f"0{int(rng.integers(10, 99))} {digits[:3]} {digits[3:]}",
             f"+44 {digits[:3]} {digits[3:]}"]
    return _pick(rng, _part_of(forms, part))


def code(rng: Rng, part: str) -> str:
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    forms = ["".join(letters[int(rng.integers(23))] for _ in range(3)) + str(int(rng.integers(10, 100))),
             str(int(rng.integers(1000, 10000))),
             letters[int(rng.integers(23))] + "-" + str(int(rng.integers(100, 1000)))]
    return _pick(rng, _part_of(forms, part))


def version(rng: Rng, part: str) -> str:
    return f"{int(rng.integers(1, 9))}.{int(rng.integers(0, 20))}.{int(rng.integers(0, 10))}"


def yes_no(rng: Rng, part: str) -> str:
    return "yes" if rng.random() < 0.5 else "no"


def item_list(rng: Rng, part: str) -> str:
    k = int(rng.integers(2, 4))
    picks = [_ITEMS[int(i)] for i in rng.choice(len(_ITEMS), size=k, replace=False)]
    return ", ".join(picks[:-1]) + " and " + picks[-1]


def food_list(rng: Rng, part: str) -> str:
    k = int(rng.integers(2, 4))
    picks = [_FOOD[int(i)] for i in rng.choice(len(_FOOD), size=k, replace=False)]
    return ", ".join(picks[:-1]) + " and " + picks[-1]


def year(rng: Rng, part: str) -> str:
    return str(int(rng.integers(1890, 2024)))


ValueFn = Callable[[Rng, str], str]


def _pick_fn(options: str | Sequence[str]) -> ValueFn:
    """A value drawn from options (a sequence, or one ``|``-separated string)."""
    choices = options.split("|") if isinstance(options, str) else list(options)
    return lambda rng, part: _pick(rng, choices)


city, colour, dept, reason, weekday = (_pick_fn(x) for x in (_CITY, _COLOUR, _DEPT, _REASON, _WEEKDAY))


@dataclass(frozen=True)
class Attr:
    """One fact a document can state: how its value is drawn, stated and asked.

    Templates use ``{s}`` for the subject and ``{v}`` for the value. For a yes/no attribute the
    statements are ``"yes form|no form"`` pairs and the value is ``yes`` or ``no``.
    """

    name: str
    value: ValueFn
    statements: tuple[str, ...]
    questions: tuple[str, ...]


def _attr(name: str, value: ValueFn, statements: str, questions: str) -> Attr:
    return Attr(name, value, tuple(statements.split(" || ")), tuple(questions.split(" || ")))


@dataclass(frozen=True)
class Kind:
    """A document kind: a title, a subject, its facts and sentences without facts."""

    name: str
    subject: ValueFn
    titles: tuple[str, ...]
    attrs: tuple[Attr, ...]
    plain: tuple[str, ...]
    """Sentences without a fact about a value (they may name ``{s}``)."""


def _kind(name: str, subject: ValueFn, titles: str, attrs: list[Attr], plain: str) -> Kind:
    return Kind(name, subject, tuple(titles.split(" || ")), tuple(attrs), tuple(plain.split(" || ")))


def _clinic_name(rng: Rng, part: str) -> str:
    return f"{_pick(rng, _TOWN)} {_pick(rng, ['Health Centre', 'Dental Clinic', 'Medical Practice', 'Eye Clinic'])}"


def _shop_name(rng: Rng, part: str) -> str:
    return f"{_pick(rng, _LAST)}'s {_pick(rng, ['Bakery', 'Bike Shop', 'Bookshop', 'Hardware', 'Deli', 'Florist'])}"


def _venue(rng: Rng, part: str) -> str:
    return f"the {_pick(rng, _TOWN)} {_pick(rng, ['Community Hall', 'Library', 'Sports Centre', 'Arts Centre'])}"


def _company(rng: Rng, part: str) -> str:
    return f"{brand(rng, part)} {_pick(rng, ['Logistics', 'Software', 'Foods', 'Energy', 'Design', 'Insurance'])}"


def _app(rng: Rng, part: str) -> str:
    return f"{brand(rng, part)}{_pick(rng, ['Notes', 'Sync', 'Pay', 'Track', 'Mail', 'Plan'])}"


def _event(rng: Rng, part: str) -> str:
    what = ["Food Fair", "Book Festival", "Half Marathon", "Jazz Weekend", "Craft Market", "Science Night"]
    return f"the {_pick(rng, _TOWN)} {_pick(rng, what)}"


def _trip(rng: Rng, part: str) -> str:
    return f"the {_pick(rng, _CITY)} {_pick(rng, ['study trip', 'team retreat', 'walking tour', 'conference trip'])}"


def _building(rng: Rng, part: str) -> str:
    return f"{_pick(rng, _STREET)} House"


def _dish(rng: Rng, part: str) -> str:
    return (f"{_pick(rng, ['smoky', 'lemon', 'spiced', 'creamy', 'green', 'roasted'])} "
            f"{_pick(rng, ['lentil soup', 'chicken stew', 'bean salad', 'rice bake', 'mushroom pie', 'noodle bowl'])}")


def _job(rng: Rng, part: str) -> str:
    job = ["Data Analyst", "Carpenter", "Nurse", "Web Developer", "Chef", "Accountant"]
    return f"{_pick(rng, ['Junior', 'Senior', 'Lead', 'Trainee'])} {_pick(rng, job)}"


def _team(rng: Rng, part: str) -> str:
    return f"the {_pick(rng, ['platform', 'marketing', 'finance', 'research', 'design', 'support'])} team"


def _hotel(rng: Rng, part: str) -> str:
    return f"the {_pick(rng, _STREET)} {_pick(rng, ['Hotel', 'Inn', 'Guesthouse', 'Lodge'])}"


# ---------------------------------------------------------------------------------------------
KINDS: tuple[Kind, ...] = (
    _kind("manual", product, "{s}: Owner's Manual || Using your {s} || {s} quick guide", [
        _attr("maker", brand, "The {s} is made by {v} Appliances. || {s} is a product of {v} Appliances. || "
              "{v} Appliances designed and built the {s}.",
              "Who makes the {s}? || Which company manufactures the {s}? || What brand is behind the {s}?"),
        _attr("warranty", long_duration, "The {s} comes with a warranty of {v}. || "
              "The warranty on the {s} lasts {v}. || "
              "Every {s} is covered for {v} from the date of purchase.",
              "How long is the warranty of the {s}? || For how long is the {s} guaranteed? || "
              "How long does the cover last if the {s} breaks?"),
        _attr("charge", short_duration, "A full charge takes {v}. || The battery charges fully in {v}. || "
              "Charging the {s} from empty takes {v}.",
              "How long does it take to charge the {s}? || How much time does a full charge need? || "
              "How long must the {s} stay plugged in to be full?"),
        _attr("weight", weight, "The {s} weighs {v}. || It has a weight of {v}. || At {v}, the {s} is easy to carry.",
              "How much does the {s} weigh? || What is the weight of the {s}? || How heavy is the {s}?"),
        _attr("clean", days_or_weeks, "Clean the filter every {v}. || The filter should be cleaned every {v}. || "
              "Rinse the filter once every {v}.",
              "How often should the filter be cleaned? || When should I clean the filter? || "
              "How frequently does the filter need washing?"),
        _attr("box", item_list, "The box contains {v}. || In the box you will find {v}. || The {s} ships with {v}.",
              "What is in the box? || What comes with the {s}? || What does the package include?"),
        _attr("error", code, "Error code {v} means the motor is overheating. || If the display shows {v}, the motor "
              "is too hot. || An overheating motor is reported as error {v}.",
              "Which error code means the motor is overheating? || What does the display show when the motor "
              "is too hot? || Which code signals an overheated motor?"),
    ], "Read these instructions before first use. || Keep the {s} away from water. || Unplug the {s} before "
       "cleaning it. || Do not let children play with the {s}. || Store the {s} in a dry place."),
    _kind("faq", _shop_name, "Frequently asked questions || {s}: FAQ || Questions about {s}", [
        _attr("open", hours, "We are open from {v} every day. || Opening hours are {v}. || You can visit us from {v}.",
              "What are the opening hours? || When is {s} open? || At what times can I come in?"),
        _attr("delivery", price, "Delivery costs {v} per order. || We charge {v} for delivery. || A delivery fee of "
              "{v} is added at checkout.",
              "How much does delivery cost? || What is the delivery fee? || How much extra do I pay to have it "
              "brought to my door?"),
        _attr("returns", days_or_weeks, "You can return items within {v}. || "
              "Returns are accepted for {v} after purchase. || "
              "Items may be sent back up to {v} after you buy them.",
              "How long do I have to return an item? || What is the return period? || Until when can I send "
              "something back?"),
        _attr("owner", person, "{s} is run by {v}. || The owner of {s} is {v}. || {v} runs {s}.",
              "Who runs {s}? || Who is the owner of {s}? || Who is in charge of the shop?"),
        _attr("address", address, "You will find us at {v}. || {s} is at {v}. || Our address is {v}.",
              "Where is {s}? || What is the address of {s}? || Where can I find the shop?"),
        _attr("dogs", yes_no, "Dogs are welcome inside. | Dogs are not allowed inside. || We allow dogs in the shop. | "
              "We do not allow dogs in the shop. || Well-behaved dogs may come in. | Sorry, no dogs inside.",
              "Are dogs allowed inside? || Can I bring my dog into the shop? || Is my dog welcome?"),
        _attr("phone", phone, "Call us on {v}. || Our phone number is {v}. || For orders, ring {v}.",
              "What is the phone number? || How can I call {s}? || Which number should I ring?"),
    ], "We are a small family business. || Thank you for shopping with us. || Gift cards are sold in the shop. || "
       "We post news on our website every week. || Please ask the staff if you need help."),
    _kind("notice", _venue, "Notice: temporary closure || Important notice || Closure of {s}", [
        _attr("closed_from", date, "{s} will be closed from {v}. || From {v}, {s} is closed. || "
              "The closure starts on {v}.",
              "When does the closure start? || From what date is {s} closed? || When will the doors shut?"),
        _attr("reason", reason, "The closure is due to {v}. || {s} is closing because of {v}. || We have to close "
              "because of {v}.",
              "Why is {s} closing? || What is the reason for the closure? || What caused the closure?"),
        _attr("reopen", date, "We expect to reopen on {v}. || {s} will reopen on {v}. || Doors open again on {v}.",
              "When will {s} reopen? || On what date does it reopen? || When can visitors come back?"),
        _attr("contact", person, "Questions can be sent to {v}, the site manager. || "
              "Please contact the manager, {v}. || "
              "The site manager, {v}, can answer questions.",
              "Who should I contact with questions? || Who is the site manager? || Who can answer questions "
              "about the closure?"),
        _attr("alternative", _venue, "In the meantime, please use {v}. || Visitors can go to {v} instead. || "
              "Services move to {v} while we are closed.",
              "Where should visitors go instead? || Which place can be used during the closure? || Where do "
              "services move to?"),
    ], "We apologise for the inconvenience. || Thank you for your patience. || Bookings already made will be "
       "moved. || Updates will be posted at the entrance."),
    _kind("changelog", _app, "{s} release notes || What's new in {s} || {s} changelog", [
        _attr("version", version, "Version {v} of {s} was released this week. || {s} {v} is now available. || "
              "This release is version {v}.",
              "What is the latest version of {s}? || Which version was just released? || What version number "
              "does the new release have?"),
        _attr("release_date", date, "It was released on {v}. || The update came out on {v}. || Release date: {v}.",
              "When was the update released? || On what date did the new version come out? || When did this "
              "release ship?"),
        _attr("fixed", reason, "This update fixes a crash caused by {v}. || A crash caused by {v} is fixed. || "
              "We fixed the crash that {v} used to trigger.",
              "What caused the crash that was fixed? || Which crash does the update fix? || What used to make "
              "the app crash?"),
        _attr("min_os", version, "{s} now needs operating system version {v} or newer. || The minimum system "
              "version is now {v}. || Devices older than system {v} are no longer supported.",
              "What is the minimum system version? || Which operating system version is required? || How new "
              "must the system be to run {s}?"),
        _attr("lead", person, "The release was led by {v}. || {v} managed this release. || Thanks to {v}, who "
              "coordinated the release.",
              "Who led the release? || Who managed this release? || Who coordinated the update?"),
        _attr("storage", percent, "The app now uses {v} less storage. || Storage use went down by {v}. || "
              "{s} takes up {v} less space than before.",
              "How much less storage does the app use? || By how much did storage use drop? || How much space "
              "does the update save?"),
    ], "Thank you for the feedback. || Several smaller bugs were fixed. || The settings screen has a new layout. || "
       "Update from the app store as usual."),
    _kind("handbook", _company, "{s} staff handbook || Employee handbook || Working at {s}", [
        _attr("leave", small_count, "Staff get {v} days of paid leave a year. || Every employee has {v} days of "
              "holiday per year. || The annual leave allowance is {v} days.",
              "How many days of paid leave do staff get? || What is the annual holiday allowance? || How many "
              "days off a year does an employee have?"),
        _attr("payday", weekday, "Salaries are paid on the last {v} of the month. || Pay day is the last {v} of each "
              "month. || Wages arrive on the month's final {v}.",
              "On which day are salaries paid? || When is pay day? || On what weekday do wages arrive?"),
        _attr("hr", person, "The head of human resources is {v}. || {v} leads human resources. || Human resources "
              "is run by {v}.",
              "Who is the head of human resources? || Who leads HR? || Who runs the personnel department?"),
        _attr("start", time_of_day, "The working day starts at {v}. || Staff are expected at their desks by {v}. || "
              "Work begins at {v}.",
              "When does the working day start? || What time should staff arrive? || At what time does work "
              "begin?"),
        _attr("expenses", dept, "Expense claims go to {v}. || Send expense claims to {v}. || {v} handles expense "
              "claims.",
              "Where do expense claims go? || Who handles expense claims? || Who should I send my receipts to?"),
        _attr("remote", small_count, "Staff may work from home {v} days a month. || Up to {v} days a month can be "
              "worked remotely. || Remote work is allowed for {v} days each month.",
              "How many days a month can staff work from home? || How much remote work is allowed? || How "
              "often may I work from home?"),
        _attr("parking", yes_no, "Free parking is provided for staff. | There is no staff parking. || Staff can park "
              "on site for free. | Staff cannot park on site. || The company offers parking. | The company "
              "offers no parking.",
              "Is there staff parking? || Can employees park on site? || Do workers get a parking space?"),
    ], "Welcome to the team. || Please read this handbook in your first week. || Ask your manager if anything is "
       "unclear. || The handbook is updated every year."),
    _kind("product_sheet", product, "{s} product sheet || {s} specifications || Technical data: {s}", [
        _attr("price", price, "The {s} costs {v}. || It sells for {v}. || The retail price of the {s} is {v}.",
              "How much does the {s} cost? || What is the price of the {s}? || What do I have to pay for the {s}?"),
        _attr("capacity", volume, "It holds {v}. || The tank has a capacity of {v}. || The {s} can hold up to {v}.",
              "How much does the {s} hold? || What is the capacity of the {s}? || How much fits in the tank?"),
        _attr("colour", colour, "The {s} comes in {v}. || It is available in {v}. || The only finish is {v}.",
              "What colour is the {s}? || In which colour is it sold? || Which finish does the {s} have?"),
        _attr("range", distance, "Its range is {v}. || The {s} reaches up to {v}. || The signal carries for {v}.",
              "What is the range of the {s}? || How far does the {s} reach? || Over what distance does the "
              "signal carry?"),
        _attr("made_in", city, "The {s} is made in {v}. || It is assembled in {v}. || Every {s} is built in our "
              "factory in {v}.",
              "Where is the {s} made? || In which city is it assembled? || Where is the factory that builds it?"),
        _attr("launch", year, "The {s} was first sold in {v}. || It launched in {v}. || "
              "The {s} has been on sale since {v}.",
              "When was the {s} first sold? || In what year did it launch? || Since when has the {s} been on sale?"),
    ], "All parts are recyclable. || Specifications may change without notice. || The {s} is tested before it "
       "leaves the factory. || Spare parts are available from dealers."),
    _kind("meeting_notes", _team, "Minutes of the meeting of {s} || {s}: meeting notes || "
          "Notes from {s}'s weekly meeting", [
        _attr("chair", person, "The meeting was chaired by {v}. || {v} chaired the meeting. || {v} led the discussion.",
              "Who chaired the meeting? || Who led the meeting? || Who ran the discussion?"),
        _attr("budget", price, "The budget for the next quarter was set at {v}. || {s} agreed a budget of {v}. || "
              "Next quarter's spending is capped at {v}.",
              "What budget was agreed? || How much can be spent next quarter? || What is the spending limit?"),
        _attr("deadline", date, "The report is due on {v}. || The deadline for the report is {v}. || Everyone must "
              "hand in the report by {v}.",
              "When is the report due? || What is the deadline for the report? || By when must the report be "
              "handed in?"),
        _attr("owner", person, "{v} will write the report. || The report will be written by {v}. || {v} volunteered "
              "to draft the report.",
              "Who will write the report? || Who is drafting the report? || Who took on the report?"),
        _attr("next", date, "The next meeting is on {v}. || {s} meets again on {v}. || We will meet next on {v}.",
              "When is the next meeting? || When does the team meet again? || On what date is the following "
              "meeting?"),
        _attr("attendance", small_count, "{v} people attended. || Attendance was {v}. || "
              "There were {v} people in the room.",
              "How many people attended? || What was the attendance? || How many were present?"),
    ], "The minutes of the last meeting were approved. || There was no other business. || Coffee was provided. || "
       "Action points are listed below."),
    _kind("policy", _company, "{s} travel policy || Expenses policy || Policy on business travel", [
        _attr("hotel_cap", price, "Hotel rooms may cost at most {v} a night. || The nightly hotel limit is {v}. || "
              "Staff should not book rooms above {v} per night.",
              "What is the hotel limit per night? || How much may a hotel room cost? || What is the most I can "
              "pay for a room?"),
        _attr("approval", person, "Trips must be approved by {v}. || {v} approves all trips. || No trip is booked "
              "without the approval of {v}.",
              "Who approves trips? || Whose approval is needed for travel? || Who must sign off on a trip?"),
        _attr("notice", days_or_weeks, "Trips must be booked {v} in advance. || Book travel at least {v} ahead. || "
              "Requests made less than {v} before departure are refused.",
              "How far in advance must trips be booked? || How much notice is needed for travel? || How early "
              "should I request a trip?"),
        _attr("class", yes_no, "First-class travel is allowed. | First-class travel is not allowed. || Staff may "
              "fly first class. | Staff may not fly first class. || First-class tickets are covered. | "
              "First-class tickets are never covered.",
              "Is first-class travel allowed? || Can staff fly first class? || Will the company pay for a "
              "first-class ticket?"),
        _attr("meal", price, "Meals are refunded up to {v} a day. || The daily meal allowance is {v}. || Food "
              "costs are covered up to {v} per day.",
              "What is the daily meal allowance? || How much can I spend on food per day? || Up to what amount "
              "are meals refunded?"),
    ], "This policy applies to all staff. || Keep all receipts. || Exceptions are rare. || The policy is reviewed "
       "every year."),
    _kind("profile", person, "Profile: {s} || About {s} || Meet {s}", [
        _attr("born", city, "{s} was born in {v}. || {s} was born and grew up in {v}. || {v} is the city "
              "where {s} was born.",
              "Where was {s} born? || What is the birthplace of {s}? || Which city does {s} come from?"),
        _attr("job", _job, "{s} works as a {v}. || By profession, {s} is a {v}. || {s} has a job as a {v}.",
              "What does {s} do for a living? || What is the job of {s}? || What is {s}'s profession?"),
        _attr("employer", _company, "{s} works for {v}. || {s}'s employer is {v}. || {s} joined {v} last year.",
              "Who does {s} work for? || Which company employs {s}? || Where is {s} employed?"),
        _attr("hobby", _pick_fn("rowing|chess|beekeeping|salsa dancing|bird watching|rock climbing|knitting|"
                                "astronomy|sailing|pottery"),
              "In spare hours, {s} enjoys {v}. || {s}'s favourite hobby is {v}. || "
                    "At weekends {s} is usually busy with {v}.",
              "What is the hobby of {s}? || What does {s} do for fun? || How does {s} spend weekends?"),
        _attr("languages", small_count, "{s} speaks {v} languages. || {s} is fluent in {v} languages. || {s} can "
              "talk to people in {v} languages.",
              "How many languages does {s} speak? || In how many languages is {s} fluent? || How many "
              "languages can {s} use?"),
        _attr("award", year, "{s} won a national award in {v}. || In {v}, {s} received a national award. || "
              "{s}'s national award came in {v}.",
              "When did {s} win the award? || In what year did {s} receive an award? || What year was {s} "
              "honoured?"),
    ], "{s} is known for hard work. || Colleagues describe {s} as friendly. || {s} likes to travel. || {s} "
       "lives with two cats."),
    _kind("clinic", _clinic_name, "{s}: patient information || Visiting {s} || {s}", [
        _attr("open", hours, "{s} is open from {v} on weekdays. || Weekday opening hours are {v}. || Patients are "
              "seen from {v}.",
              "When is {s} open? || What are the weekday opening hours? || At what times are patients seen?"),
        _attr("doctor", person, "The lead doctor is {v}. || {v} is the senior doctor at {s}. || Dr {v} leads the "
              "medical team.",
              "Who is the lead doctor? || Who is the senior doctor at {s}? || Who leads the medical team?"),
        _attr("phone", phone, "To book, call {v}. || Appointments can be made on {v}. || The booking line is {v}.",
              "What number do I call to book? || How do I make an appointment? || What is the booking line?"),
        _attr("fee", price, "A missed appointment costs {v}. || We charge {v} for missed appointments. || "
              "Patients who do not come pay {v}.",
              "How much does a missed appointment cost? || What is the fee for missing an appointment? || What "
              "do I pay if I do not turn up?"),
        _attr("parking", yes_no, "There is free parking at the back. | There is no parking at {s}. || Patients "
              "can park for free. | Patients cannot park here. || Free parking is available. | No parking is "
              "available.",
              "Is there parking at {s}? || Can patients park? || Is there somewhere to leave my car?"),
        _attr("room", room, "Blood tests are taken in {v}. || Go to {v} for blood tests. || "
              "The blood test room is {v}.",
              "Where are blood tests taken? || Where should I go for a blood test? || Which room is for blood "
              "tests?"),
    ], "Please arrive five minutes early. || Bring a list of your medicines. || Masks are available at the "
       "door. || We are accepting new patients."),
    _kind("event", _event, "{s} || Join us for {s} || {s}: programme", [
        _attr("date", date, "{s} takes place on {v}. || This year {s} is held on {v}. || Mark {v} in your calendar.",
              "When does {s} take place? || On what date is the event held? || Which day should I keep free?"),
        _attr("venue", _venue, "It is held at {v}. || The venue is {v}. || Everyone gathers at {v}.",
              "Where is {s} held? || What is the venue? || Where does everyone gather?"),
        _attr("ticket", price, "Tickets cost {v}. || Entry is {v} per person. || A ticket is {v}.",
              "How much are tickets? || What is the entry price? || How much do I pay to get in?"),
        _attr("start", time_of_day, "Doors open at {v}. || The event starts at {v}. || Things get going at {v}.",
              "What time does it start? || When do the doors open? || At what time does the event begin?"),
        _attr("organiser", person, "The organiser is {v}. || {v} organises the event. || {v} is the person behind {s}.",
              "Who organises {s}? || Who is the organiser? || Who is running the event?"),
        _attr("stalls", big_count, "There will be {v} stalls. || {v} stalls have signed up. || Visitors can browse "
              "{v} stalls.",
              "How many stalls will there be? || How many stalls signed up? || How many stalls can visitors see?"),
    ], "Everyone is welcome. || Bring your friends and family. || There will be music all day. || Food and drinks "
       "will be on sale."),
    _kind("lease", _building, "Tenancy agreement: {s} || {s}: lease summary || Rental terms for {s}", [
        _attr("rent", price, "The monthly rent is {v}. || Rent of {v} is due each month. || "
              "The tenant pays {v} a month.",
              "How much is the rent? || What is the monthly rent? || How much does the tenant pay each month?"),
        _attr("deposit", price, "A deposit of {v} is required. || The deposit is {v}. || Before moving in, the tenant "
              "pays a deposit of {v}.",
              "How much is the deposit? || What deposit is required? || How much must be paid before moving in?"),
        _attr("landlord", person, "The landlord is {v}. || {s} is owned by {v}. || {v} owns and lets {s}.",
              "Who is the landlord? || Who owns {s}? || Who is letting the property?"),
        _attr("term", long_duration, "The lease runs for {v}. || The tenancy lasts {v}. || This agreement covers a "
              "period of {v}.",
              "How long does the lease run? || How long is the tenancy? || For what period is the agreement?"),
        _attr("pets", yes_no, "Pets are allowed. | Pets are not allowed. || The tenant may keep pets. | The tenant "
              "may not keep pets. || Animals are permitted. | No animals are permitted.",
              "Are pets allowed? || May the tenant keep pets? || Can I have a cat in the flat?"),
        _attr("address", address, "{s} is at {v}. || The property is located at {v}. || The flat is at {v}.",
              "What is the address of {s}? || Where is the property? || Where is the flat located?"),
    ], "Both parties have signed this agreement. || The tenant must keep the property clean. || Repairs are "
       "reported in writing. || The garden is shared."),
    # held-out kinds (never trained on)
    _kind("recipe", _dish, "{s} || Recipe: {s} || How to make {s}", [
        _attr("serves", small_count, "This recipe serves {v}. || It makes enough for {v} people. || "
              "The dish feeds {v}.",
              "How many people does the recipe serve? || For how many is the dish? || How many does it feed?"),
        _attr("bake", minutes, "Bake it for {v}. || Cook the dish for {v}. || It needs {v} in the oven.",
              "How long should it bake? || How long does it cook? || How much time in the oven?"),
        _attr("oven", temperature, "Heat the oven to {v}. || Set the oven to {v}. || Preheat to {v}.",
              "What temperature should the oven be? || How hot should the oven be? || What do I preheat to?"),
        _attr("key", food_list, "The main ingredients are {v}. || You will need {v}. || It is made with {v}.",
              "What are the main ingredients? || What do I need to make it? || What is it made with?"),
        _attr("author", person, "The recipe comes from {v}. || {v} created this recipe. || This is {v}'s recipe.",
              "Who created the recipe? || Whose recipe is it? || Where does the recipe come from?"),
    ], "Serve it warm. || It keeps in the fridge for a day. || Add salt to taste. || Stir well before serving."),
    _kind("itinerary", _trip, "Itinerary for {s} || {s}: travel plan || Schedule: {s}", [
        _attr("depart", time_of_day, "The coach leaves at {v}. || We depart at {v}. || Departure is at {v} sharp.",
              "What time does the coach leave? || When do we depart? || At what time is departure?"),
        _attr("hotel", _hotel, "We stay at {v}. || Rooms are booked at {v}. || The group sleeps at {v}.",
              "Where do we stay? || Which hotel is booked? || Where does the group sleep?"),
        _attr("guide", person, "The guide is {v}. || {v} will guide the group. || Our local guide is {v}.",
              "Who is the guide? || Who guides the group? || Who is the local guide?"),
        _attr("cost", price, "The trip costs {v} per person. || Each traveller pays {v}. || The price is {v} a head.",
              "How much does the trip cost? || What does each traveller pay? || What is the price per person?"),
        _attr("return", date, "We return on {v}. || The group comes back on {v}. || The trip ends on {v}.",
              "When do we return? || When does the group come back? || On what date does the trip end?"),
    ], "Bring comfortable shoes. || Passports must be valid. || Lunch is included on the first day. || Please be "
       "on time."),
    _kind("job_posting", _job, "Job opening: {s} || We are hiring: {s} || Vacancy: {s}", [
        _attr("salary", price, "The salary is {v} a month. || The role pays {v} per month. || Monthly pay is {v}.",
              "What is the salary? || How much does the role pay? || What is the monthly pay?"),
        _attr("location", city, "The job is based in {v}. || You will work in our {v} office. || "
              "The position is in {v}.",
              "Where is the job based? || In which city is the office? || Where is the position?"),
        _attr("closing", date, "Applications close on {v}. || Apply by {v}. || The deadline to apply is {v}.",
              "When do applications close? || What is the application deadline? || By when must I apply?"),
        _attr("manager", person, "You will report to {v}. || The hiring manager is {v}. || {v} leads the team you "
              "would join.",
              "Who would I report to? || Who is the hiring manager? || Who leads the team?"),
        _attr("hours", small_count, "The role is {v} hours a week. || You will work {v} hours per week. || It is a "
              "{v}-hour week.",
              "How many hours a week is the role? || How many weekly hours? || How long is the working week?"),
    ], "We value diversity. || Training is provided. || Send a short cover letter. || Interviews are held online."),
    _kind("hotel_info", _hotel, "Welcome to {s} || Guest information: {s} || {s}: your stay", [
        _attr("checkout", time_of_day, "Check-out is at {v}. || Please leave your room by {v}. || Rooms must be "
              "vacated by {v}.",
              "What time is check-out? || When must I leave the room? || By when should guests vacate?"),
        _attr("breakfast", room, "Breakfast is served in {v}. || You can have breakfast in {v}. || The breakfast "
              "room is {v}.",
              "Where is breakfast served? || Where can I eat breakfast? || Which room is for breakfast?"),
        _attr("wifi", code, "The wifi password is {v}. || Connect to the wifi with the password {v}. || Wifi "
              "password: {v}.",
              "What is the wifi password? || How do I connect to the wifi? || What password opens the wifi?"),
        _attr("manager", person, "The duty manager is {v}. || {v} manages {s}. || For complaints, ask for {v}.",
              "Who is the duty manager? || Who manages the hotel? || Who should I ask for with a complaint?"),
        _attr("pool", hours, "The pool is open from {v}. || You can swim from {v}. || Pool hours are {v}.",
              "When is the pool open? || What are the pool hours? || When can I swim?"),
    ], "We hope you enjoy your stay. || Towels are changed daily. || Smoking is not allowed. || Taxis can be "
       "ordered at reception."),
)

HELDOUT_KINDS = ("recipe", "itinerary", "job_posting", "hotel_info")
"""Document kinds that only the held-out part uses."""

TRAIN_KINDS = tuple(k.name for k in KINDS if k.name not in HELDOUT_KINDS)


def kinds_of(part: str) -> list[Kind]:
    """The document kinds a part draws from: held-out kinds belong only to ``heldout``."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; known: {', '.join(PARTS)}")
    if part == "train":
        return [k for k in KINDS if k.name not in HELDOUT_KINDS]
    return list(KINDS)


PHRASINGS = ("base", "more")
"""The template sets of the training part: ``base`` (two statements and two questions per fact
attribute) or ``more`` (those and :data:`~.realistic_more.MORE_PHRASINGS`, two more of each)."""

DEFAULT_PHRASINGS = "base"
"""The training part's template set by default: ``base``, the one every shipped checkpoint was
trained and fitted with."""


_MORE = {key: (tuple(statements.split(" || ")), tuple(questions.split(" || ")))
         for key, (statements, questions) in MORE_PHRASINGS.items()}
""":data:`~.realistic_more.MORE_PHRASINGS` split into template tuples once."""


def check_phrasings(phrasings: str, name: str = "phrasings") -> str:
    """``phrasings`` if it is one of :data:`PHRASINGS`. :raises ValueError: naming ``name``, if not."""
    if phrasings not in PHRASINGS:
        raise ValueError(f"{name} must be one of {', '.join(PHRASINGS)}, got {phrasings!r}")
    return phrasings


def templates_of(kind: Kind, attr: Attr, part: str, phrasings: str = DEFAULT_PHRASINGS
                 ) -> tuple[list[str], list[str]]:
    """The statement and question templates of ``attr`` (of ``kind``) in ``part`` (``train``,
    ``heldout`` or ``any``); ``phrasings="more"`` adds :data:`~.realistic_more.MORE_PHRASINGS` to the
    training part only.

    :raises ValueError: an unknown ``phrasings``.
    """
    check_phrasings(phrasings)
    statements, questions = _part_of(attr.statements, part), _part_of(attr.questions, part)
    more = _MORE.get(f"{kind.name}.{attr.name}") if phrasings == "more" and part == "train" else None
    if more is not None:
        statements, questions = statements + list(more[0]), questions + list(more[1])
    return statements, questions


def _statement(rng: Rng, attr: Attr, subject: str, value: str, templates: list[str]) -> str:
    text = _pick(rng, templates)
    if " | " in text:  # yes/no pair
        yes, no = text.split(" | ")
        text = yes if value == "yes" else no
    out = text.format(s=subject, v=value)
    return out[0].upper() + out[1:]


def realistic_document(rng: Rng, n_questions: int = 2, part: str = "train", min_facts: int = 3,
                       max_facts: int = 6, plain_sentences: int = 2, kind: str | None = None,
                       phrasings: str = DEFAULT_PHRASINGS) -> TrainDoc:
    """One realistic document with ``n_questions`` questions about its facts.

    :param part: ``train`` (training kinds, templates and value formats) or ``heldout`` (held-out
        kinds with any template, or training kinds phrased only with held-out templates).
    :param min_facts: fewest facts stated; each fact is one sentence, in random order.
    :param plain_sentences: up to this many sentences without a fact are mixed in.
    :param kind: force a document kind by name (default: drawn among the part's kinds).
    :param phrasings: the training part's template set (:data:`PHRASINGS`); the held-out part is the
        same with either.
    :raises ValueError: an unknown part, kind or phrasings.
    """
    check_phrasings(phrasings)
    kinds = kinds_of(part)
    if kind is not None:
        chosen = [k for k in KINDS if k.name == kind]
        if not chosen:
            raise ValueError(f"unknown document kind {kind!r}; known: {', '.join(k.name for k in KINDS)}")
        k = chosen[0]
    else:
        k = kinds[int(rng.integers(len(kinds)))]
    # held-out kinds are wholly new: all their templates and value formats are used; the other
    # kinds split templates and formats by part
    whole = part == "heldout" and k.name in HELDOUT_KINDS
    template_part = "any" if whole else part
    subject = k.subject(rng, part)
    n_facts = int(rng.integers(min_facts, min(max_facts, len(k.attrs)) + 1))
    attrs = [k.attrs[int(i)] for i in rng.choice(len(k.attrs), size=n_facts, replace=False)]
    facts: list[tuple[Attr, str, str]] = []  # (attr, value, sentence)
    for a in attrs:
        value = a.value(rng, template_part)
        statements = templates_of(k, a, template_part, phrasings)[0]
        facts.append((a, value, _statement(rng, a, subject, value, statements)))
    sentences = [f[2] for f in facts]
    n_plain = int(rng.integers(0, plain_sentences + 1))
    for i in rng.choice(len(k.plain), size=min(n_plain, len(k.plain)), replace=False):
        s = k.plain[int(i)].format(s=subject)
        sentences.insert(int(rng.integers(len(sentences) + 1)), s[0].upper() + s[1:])
    title = _pick(rng, k.titles).format(s=subject)
    title = title[0].upper() + title[1:]
    text = title + "\n\n" + " ".join(sentences)
    qas: list[QA] = []
    for j in rng.permutation(len(facts))[:n_questions]:
        a, value, _ = facts[int(j)]
        questions = templates_of(k, a, template_part, phrasings)[1]
        q = _pick(rng, questions).format(s=subject)
        qas.append(QA(q[0].upper() + q[1:], value, "realistic"))
    return TrainDoc(text, qas, "realistic", meta={"kind": k.name, "part": part})


def standalone_fact(rng: Rng, part: str = "heldout") -> tuple[str, str, str]:
    """One fact that reads on its own (statement and question both name the subject), for a
    needle in filler text: ``(sentence, question, answer)`` in the part's phrasings and formats.

    Yes/no facts are left out (their answer is not a span to find).
    """
    kinds = kinds_of(part)
    for _ in range(1000):
        k = kinds[int(rng.integers(len(kinds)))]
        whole = part == "heldout" and k.name in HELDOUT_KINDS
        template_part = "any" if whole else part
        a = k.attrs[int(rng.integers(len(k.attrs)))]
        if a.value is yes_no:
            continue
        statements = [t for t in _part_of(a.statements, template_part) if "{s}" in t]
        questions = [t for t in _part_of(a.questions, template_part) if "{s}" in t]
        if not statements or not questions:
            continue
        subject, value = k.subject(rng, part), a.value(rng, template_part)
        question = _pick(rng, questions).format(s=subject)
        return _statement(rng, a, subject, value, statements), question[0].upper() + question[1:], value
    raise ValueError(f"no standalone fact in part {part!r}")  # pragma: no cover - the kinds have many
