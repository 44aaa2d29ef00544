"""More training-part phrasings for the realistic-document generator (:mod:`.realistic`).

Each training kind's fact attribute has two statement and two question templates in the training
part (the third of each is held out). The reading memory matches a question to the document's
position of its answer; with two phrasings per fact it learns the words of those phrasings more
than the fact. These are two more statements and two more questions per attribute, for training
only: ``realistic_document(..., phrasings="more")`` draws from the training part's templates and
these together, and ``part="heldout"`` never sees them (the held-out part is unchanged, seed for
seed). They were written from the training part's templates alone, varying the order (the value
first or last), the verb and the words a question shares with its statement.

Keys are ``"kind.attribute"``; values ``(statements, questions)``, each ``" || "``-separated, in
the notation of :class:`~.realistic.Attr` (``{s}`` the subject, ``{v}`` the value, ``"yes | no"``
pairs for yes/no facts).

Usage example::

    import numpy as np
    from d2l_haystack.training.realistic import realistic_document

    doc = realistic_document(np.random.default_rng(0), n_questions=2, phrasings="more")
"""

from __future__ import annotations

MORE_PHRASINGS: dict[str, tuple[str, str]] = {
    # manual
    "manual.maker": ("{v} Appliances is the maker of the {s}. || The {s} comes from the {v} Appliances factory.",
                     "Who produces the {s}? || The {s} is sold under which maker's name?"),
    "manual.warranty": ("Every {s} is covered against faults for {v}. || Repairs to the {s} are free for {v}.",
                        "What guarantee does the {s} have? || For how long will faults in the {s} be repaired "
                        "for free?"),
    "manual.charge": ("Plugged in, the {s} is full again after {v}. || Allow {v} for the battery to fill up.",
                      "How long until the {s} is fully charged? || What is the charging time?"),
    "manual.weight": ("The {s} is light: just {v}. || The {s} tips the scales at {v}.",
                      "What is the mass of the {s}? || What does the {s} weigh?"),
    "manual.clean": ("Every {v}, take out the filter and clean it. || Once every {v} the filter needs a wash.",
                     "What is the cleaning interval for the filter? || At what interval is the filter washed?"),
    "manual.box": ("Packed with the {s} are {v}. || Along with the {s}, the package holds {v}.",
                   "What is included with the {s}? || What else is in the package?"),
    "manual.error": ("An overheated motor shows up as code {v}. || When {v} appears on the screen, let the "
                     "motor cool down.",
                     "What code does an overheated motor show? || Which message tells me to let the motor cool?"),
    # faq
    "faq.open": ("Our doors are open from {v}, seven days a week. || Every day {s} welcomes customers from {v}.",
                 "At what times can I visit {s}? || When are the doors open?"),
    "faq.delivery": ("Each order is delivered for {v}. || A delivery charge of {v} is added to every order.",
                     "What do I pay to have an order delivered? || How much is added for shipping?"),
    "faq.returns": ("Unwanted items can come back to us for up to {v}. || {v} is how long you have to send "
                    "something back.",
                    "Up to when are returns taken? || How long is the window for returns?"),
    "faq.owner": ("{v} owns and manages {s}. || {s} belongs to {v}.",
                  "Whose shop is {s}? || Who is the proprietor of {s}?"),
    "faq.address": ("Come and see us at {v}. || The shop's address is {v}.",
                    "Where can I find {s}? || Where is the shop located?"),
    "faq.dogs": ("Your dog may come in with you. | Please leave your dog outside. || Dogs can join you in the "
                 "shop. | Dogs must stay outside the shop.",
                 "Is my dog allowed in? || May dogs come inside?"),
    "faq.phone": ("{v} is the number to ring. || You can reach {s} by phone on {v}.",
                  "Which number reaches {s}? || What is the telephone number of {s}?"),
    # notice
    "notice.closed_from": ("Starting {v}, {s} will not be open. || The closure of {s} begins on {v}.",
                           "When will {s} shut? || On which date does {s} stop opening?"),
    "notice.reason": ("{v} has forced {s} to close. || {s} shuts owing to {v}.",
                      "What is behind the closure of {s}? || Why will {s} be shut?"),
    "notice.reopen": ("{s} opens its doors again on {v}. || On {v} we will be open again.",
                      "What is the reopening date of {s}? || From what date is it open again?"),
    "notice.contact": ("{v}, the manager of the site, answers questions. || Any questions should go to {v}.",
                       "Who is the person to ask at the site? || Whom should I ask about it?"),
    "notice.alternative": ("{v} remains open while {s} is shut. || Until then, please go to {v}.",
                           "What can I use while {s} is closed? || Where can I go in the meantime?"),
    # changelog
    "changelog.version": ("This week we released {s} {v}. || The newest release of {s} is {v}.",
                          "Which release of {s} is the newest? || What version number did {s} just get?"),
    "changelog.release_date": ("{v} was the release date. || The new version was published on {v}.",
                               "On which day was the version published? || What was the release date?"),
    "changelog.fixed": ("{v} used to make the app crash; that is fixed now. || We fixed the crash that came "
                        "from {v}.",
                        "What made the app crash before this update? || Which bug was removed?"),
    "changelog.min_os": ("Devices need system version {v} or later to run {s}. || {s} no longer runs on "
                         "anything older than version {v}.",
                         "What system does {s} need? || Which is the oldest system version that still works?"),
    "changelog.lead": ("{v} was in charge of this release. || The person who led the release was {v}.",
                       "Who was in charge of the release? || Who headed the work on this version?"),
    "changelog.storage": ("The update shrinks {s} by {v}. || The update saves {v} of storage.",
                          "How much storage does the update free up? || By how much did the app shrink?"),
    # handbook
    "handbook.leave": ("Each year, employees may take {v} paid days off. || {v} days of paid holiday are "
                       "given every year.",
                       "How much paid time off is there per year? || How many holidays does an employee get?"),
    "handbook.payday": ("Salaries go out on the final {v} of the month. || On the last {v} of the month, "
                        "everyone is paid.",
                        "What day do wages arrive? || When do employees get their money?"),
    "handbook.hr": ("{v} is in charge of human resources. || {v} heads the human resources team.",
                    "Who runs the human resources team? || Who is responsible for human resources?"),
    "handbook.start": ("Each morning the office gets going at {v}. || By {v}, everyone should have started work.",
                       "What is the start time of the working day? || When do staff start each morning?"),
    "handbook.expenses": ("{v} deals with all expense claims. || Claims for expenses are handled by {v}.",
                          "Who deals with expense claims? || To whom should I send my claims?"),
    "handbook.remote": ("Employees can work remotely for {v} days each month. || Home working is allowed on "
                        "{v} days a month.",
                        "What is the limit on working from home? || How many home-working days are allowed?"),
    "handbook.parking": ("Staff may leave their cars on site at no cost. | No parking is available for staff. "
                         "|| Parking on site is free for employees. | Employees have no parking on site.",
                         "Do staff have somewhere to park? || Is parking provided for employees?"),
    # product_sheet
    "product_sheet.price": ("{v} buys you the {s}. || The {s} is priced at {v}.",
                            "What does the {s} sell for? || How much do I pay for the {s}?"),
    "product_sheet.capacity": ("Up to {v} fits in the {s}. || The {s} can take {v}.",
                               "What volume does the {s} take? || What is the largest amount the {s} can take?"),
    "product_sheet.colour": ("{v} is the only colour the {s} is sold in. || You can buy the {s} in {v}.",
                             "Which colour can I buy the {s} in? || What colour does it come in?"),
    "product_sheet.range": ("The {s} covers a distance of up to {v}. || On one charge the {s} goes {v}.",
                            "How far can the {s} go? || What distance does the {s} cover?"),
    "product_sheet.made_in": ("{v} is where every {s} is produced. || Production of the {s} happens in {v}.",
                              "Where is the {s} produced? || Which city builds the {s}?"),
    "product_sheet.launch": ("{v} saw the first sales of the {s}. || {v} was the year the {s} came out.",
                             "In which year did the {s} go on sale? || What year did the {s} come out?"),
    # meeting_notes
    "meeting_notes.chair": ("{v} was in the chair. || The chair of the meeting was {v}.",
                            "Who was in the chair? || Who presided over the meeting?"),
    "meeting_notes.budget": ("A budget of {v} was approved for the coming quarter. || {v} is the spending "
                             "limit for next quarter.",
                             "What is next quarter's budget? || How much money was approved?"),
    "meeting_notes.deadline": ("{v} is the due date of the report. || The report has to be handed in by {v}.",
                               "What is the last day for the report? || What is the report's due date?"),
    "meeting_notes.owner": ("{v} has taken on the report. || Writing the report falls to {v}.",
                            "Who has taken on the report? || Whose job is it to write the report?"),
    "meeting_notes.next": ("The following session of {s} is on {v}. || {v} is the date of the following meeting.",
                           "When is the team meeting again? || When will {s} meet next?"),
    "meeting_notes.attendance": ("The meeting had {v} people present. || The meeting drew {v} people.",
                                 "What was the number of attendees? || How many came to the meeting?"),
    # policy
    "policy.hotel_cap": ("{v} per night is the most a hotel room may cost. || No hotel over {v} a night will "
                         "be paid.",
                         "What is the most a hotel room may cost? || What nightly rate is the limit?"),
    "policy.approval": ("No trip goes ahead without approval from {v}. || Travel needs to be signed off by {v}.",
                        "Who signs off travel? || Who has to agree before a trip?"),
    "policy.notice": ("All travel needs to be booked at least {v} before leaving. || We need {v} of notice "
                      "for any trip.",
                      "How early must travel be booked? || What is the notice period for a trip?"),
    "policy.class": ("Flights in first class are permitted. | Flights in first class are not permitted. || "
                     "The company pays for first-class seats. | The company does not pay for first-class seats.",
                     "Are first-class flights permitted? || Does the company pay for first-class seats?"),
    "policy.meal": ("Up to {v} a day can be claimed for food. || Each day, {v} is allowed for meals.",
                    "What can be claimed for food each day? || What is the limit on meals per day?"),
    # profile
    "profile.born": ("{s} is a native of {v}. || {v} is the birthplace of {s}.",
                     "In which city was {s} born? || Where does {s} come from originally?"),
    "profile.job": ("{s} earns a living as a {v}. || {s} is employed as a {v}.",
                    "What line of work is {s} in? || What kind of work does {s} do?"),
    "profile.employer": ("{s} is on the staff of {v}. || {v} has employed {s} for some years.",
                         "Which organisation is {s} with? || For which company does {s} work?"),
    "profile.hobby": ("{s} spends free time on {v}. || Outside work, {s} loves {v}.",
                      "What is {s}'s favourite pastime? || What does {s} like to do outside work?"),
    "profile.languages": ("{v} languages are spoken by {s}. || {s} knows {v} languages.",
                          "How many languages does {s} know? || What number of languages can {s} speak?"),
    "profile.award": ("{s} has held a national award since {v}. || The national award went to {s} in {v}.",
                      "In which year was {s} given the award? || When did the award go to {s}?"),
    # clinic
    "clinic.open": ("From Monday to Friday {s} is open from {v}. || On weekdays the doors of {s} are open from {v}.",
                    "What hours does {s} keep on weekdays? || When can patients come on a weekday?"),
    "clinic.doctor": ("{v} is the lead doctor. || The medical team of {s} is headed by {v}.",
                      "Who heads the medical team at {s}? || Which doctor is in charge?"),
    "clinic.phone": ("Ring {v} to book an appointment. || {v} is the number for bookings.",
                     "What is the number for bookings? || Which number do I ring to see a doctor?"),
    "clinic.fee": ("{v} is charged for an appointment that is missed. || Not coming to an appointment costs "
                   "{v}.",
                   "What is charged for a missed appointment? || How much is the penalty for not coming?"),
    "clinic.parking": ("Patients may leave their cars at the back for free. | Patients have nowhere to park. || "
                       "Parking is free for patients. | There is no parking for patients.",
                       "Can I park when I visit {s}? || Is there parking for patients?"),
    "clinic.room": ("{v} is where blood is taken. || Blood samples are collected in {v}.",
                    "In which room is blood taken? || Where are blood samples collected?"),
    # event
    "event.date": ("{v} is the date of {s}. || {s} will be on {v}.",
                   "What is the date of {s}? || Which day is {s} on?"),
    "event.venue": ("{s} comes to {v} this year. || The event will be at {v}.",
                    "At what place is {s} this year? || Where does the event happen?"),
    "event.ticket": ("Admission is {v}. || You pay {v} to get in.",
                     "What does admission cost? || How much does one ticket cost?"),
    "event.start": ("{s} opens its doors at {v}. || At {v} the event begins.",
                    "At what time do doors open? || When does the event begin?"),
    "event.organiser": ("{s} is organised by {v}. || {v} is behind the event.",
                        "Who is running {s}? || Who puts on the event?"),
    "event.stalls": ("{s} will have {v} stalls. || A total of {v} stalls are booked.",
                     "How many stalls does {s} have? || What is the number of stalls?"),
    # lease
    "lease.rent": ("{v} is the rent for each month. || Each month the tenant pays {v} in rent.",
                   "What does the property cost per month? || How much rent is due monthly?"),
    "lease.deposit": ("The tenant must hand over a deposit of {v}. || {v} must be paid as a deposit.",
                      "What is the deposit? || What sum is held as a deposit?"),
    "lease.landlord": ("{v} owns the property. || The property belongs to {v}, the landlord.",
                       "Whose property is it? || Who is the owner of the property?"),
    "lease.term": ("{v} is the length of the lease. || The tenancy is agreed for {v}.",
                   "What is the length of the lease? || For how long is the tenancy agreed?"),
    "lease.pets": ("Animals may live in the property. | No animals may live in the property. || Keeping a pet "
                   "is permitted. | Keeping a pet is forbidden.",
                   "Can animals live in the property? || Is keeping a pet permitted?"),
    "lease.address": ("The address of {s} is {v}. || You will find the property at {v}.",
                      "Where can the property be found? || At which address is {s}?"),
}
"""Training-only statement and question templates per ``"kind.attribute"`` (see the module docstring)."""

__all__ = ["MORE_PHRASINGS"]
