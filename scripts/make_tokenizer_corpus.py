"""Write ``lit_safe/models/assets/tokenizer_corpus.txt``, the text the offline preset tokenizers are trained on.

The ``tiny`` and ``small`` presets train a byte-level BPE from this file (see ``lit_safe/models/tokenizer.py``), so the
file must be deterministic and shipped with the package. It has two parts, one piece of text per line:

* synthetic PKU-SafeRLHF conversations from :func:`lit_safe.data_modules.synthetic.generate_pku_saferlhf_rows`
  (both responses of every row), rendered in the Safe RLHF template
  ``BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}``, so that the template and the embedded default
  data tokenize into few tokens;
* general English prose written for this script (everyday life, science, programming, safety), so that real English
  text, numbers and punctuation are tokenized sensibly too.

Usage::

    python scripts/make_tokenizer_corpus.py            # writes the default path
    python scripts/make_tokenizer_corpus.py --check    # exits 1 if the file on disk differs from what it would write
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "lit_safe" / "models" / "assets" / "tokenizer_corpus.txt"
TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}"
NUM_ROWS = 1200  # 2,400 conversations, about 1.2 MB with the prose; the file must stay under 1.5 MB
SEED = 2024
MAX_BYTES = 1_500_000

# Original plain English written for this corpus; one paragraph per line of the output.
PROSE: tuple[str, ...] = (
    # Everyday life.
    "Most mornings start the same way. The alarm rings at half past six, the kettle goes on, and someone asks where "
    "the keys are. It's a small routine, but routines matter: they save us from making fifty tiny decisions before "
    "breakfast. People who sleep well tend to keep regular hours, eat something simple early in the day, and step "
    "outside for a few minutes of daylight. None of this is complicated, and that is exactly why it works.",
    "A weekly grocery list can save both money and time. Write down what you already have in the fridge, plan four or "
    "five dinners, and buy only what those meals need. Fresh vegetables go first, so cook them early in the week; "
    "frozen peas, canned beans and dry pasta can wait. If a recipe calls for half an onion, plan another dish that "
    "uses the other half. Shopping after lunch, not when you're hungry, also helps.",
    "The weather forecast said there was a 70% chance of rain, so we packed umbrellas, a thermos of tea and two extra "
    "sweaters. By noon the clouds had cleared and the sun was shining over the hills. We ate sandwiches on a bench "
    "near the lake, watched the ducks, and walked back along the river before it got dark. It was one of those days "
    "that turn out better than anyone expected.",
    "Moving to a new city is exciting and a little lonely at first. It helps to learn the bus routes, find a library "
    "card, and say hello to the neighbours. Joining a club, a choir or a weekend football team is a quick way to meet "
    "people who share an interest. After a few months, the streets that once felt strange become the way home.",
    "Cooking for friends does not have to be stressful. Choose one dish you know well, prepare as much as possible the "
    "day before, and keep dessert simple: fruit, yoghurt and a little honey are enough. Set the table early, put on "
    "some music, and remember that your guests came to see you, not to judge the sauce.",
    "Our neighbourhood has a small park with a playground, a basketball court and a community garden. On Saturdays, "
    "volunteers water the beds, pull weeds and share the harvest: tomatoes in August, pumpkins in October. Children "
    "learn where food comes from, and older residents, who have gardened for decades, are glad to give advice.",
    "Saving money is mostly about habits. Pay yourself first by moving a fixed amount into savings on payday, before "
    "you can spend it. Check your subscriptions once a year and cancel the ones you no longer use. Compare prices for "
    "large purchases, and wait a day or two before buying anything expensive; the urge often passes.",
    "Travelling by train has a charm that flying lacks. You can watch villages, forests and rivers go by, read a book, "
    "or talk with the person sitting across from you. The seats are wider, the stations are usually in the centre of "
    "town, and there is no need to arrive two hours early. For trips under five hundred kilometres, the train is often "
    "just as fast door to door.",
    "Pets bring a lot of joy, but they also need time and care. A dog needs walks twice a day, regular check-ups at "
    "the vet and plenty of patience while it learns. Cats are more independent, yet they still want attention, fresh "
    "water and a clean litter box. Before adopting, ask yourself whether you can look after an animal for ten or "
    "fifteen years.",
    "Learning a language as an adult is slow but rewarding. Ten minutes a day is better than two hours once a week. "
    "Listen to simple podcasts, label things around the house, and don't be afraid of mistakes; native speakers are "
    "usually happy that you're trying. After a year of steady practice, most learners can hold a basic conversation.",
    "The best way to keep a house tidy is to put things back right after using them. Dishes go in the sink, coats go "
    "on the hook, and letters are opened and sorted the same day. A quick fifteen-minute reset every evening prevents "
    "the mess from piling up, and the weekend is free for more pleasant things.",
    "The bicycle is one of the most efficient machines ever built. A rider on a flat road can travel four times "
    "faster than walking while using about the same energy. Early bicycles, in the 1860s, had wooden wheels and no "
    "gears; today's models are made of aluminium, steel or carbon fibre, and some have small electric motors that help "
    "on steep hills.",
    "Reading before bed is a pleasant habit for many people. A paper book or an e-reader without a bright screen is "
    "gentler on the eyes than a phone. Some readers finish one novel a week, others read a few pages a night; what "
    "matters is enjoying it. Libraries lend books for free, and many also lend audiobooks, films and even tools.",
    "Music lessons teach more than music. A beginner on the piano learns to read notes, keep a steady rhythm and "
    "practise a little every day, even when progress feels slow. After a few months the hands know where to go, and a "
    "piece that once seemed impossible can be played from memory. The same patience helps with many other skills.",
    "Writing a polite email is easy once you know the pattern. Start with a short greeting, state the purpose in the "
    "first sentence, give the details in a few short paragraphs, and end with a clear request and a thank-you. Check "
    "the names, dates and attachments before sending, and reply to important messages within a day or two.",
    "Volunteering is a good way to help others and learn new skills at the same time. Food banks need people to sort "
    "donations, animal shelters need dog walkers, and schools often look for reading helpers. Even two hours a month "
    "makes a difference, and many volunteers say they get back more than they give.",
    "Percentages describe parts of a hundred. If a jacket costs 80 dollars and is 25% off, the discount is 20 dollars, "
    "so you pay 60. If your rent rises from 1,000 to 1,050 a month, that is a 5% increase. To compare offers, turn "
    "everything into the same unit, such as the price per kilogram or the cost per month.",
    "Fractions and decimals are two ways of writing the same numbers: one half is 0.5, three quarters is 0.75, and one "
    "third is 0.333..., a decimal that never ends. Cooks use fractions all the time, for example 2/3 of a cup of milk "
    "or 1 1/2 teaspoons of baking powder, and doubling a recipe simply means multiplying each amount by two.",
    "Chemistry studies what things are made of and how they change. Atoms join into molecules: two hydrogen atoms and "
    "one oxygen atom make a molecule of water, H2O. In a chemical reaction, bonds break and new ones form, as when "
    "iron slowly reacts with oxygen and moisture to make rust, or when baking soda and vinegar fizz and release carbon "
    "dioxide.",
    "The internet is a network of networks. When you open a web page, your computer sends a request, split into small "
    "packets, through routers that pass it along until it reaches a server, which sends the page back the same way. "
    "The address of the site, like example.com, is turned into a numeric IP address by the domain name system.",
    "A database stores information so that it can be searched and updated reliably. In a relational database, data "
    "lives in tables with rows and columns, and a query such as SELECT name, city FROM customers WHERE city = 'Oslo' "
    "returns the matching rows. Indexes make such searches fast, much like the index at the back of a book.",
    "Sorting and searching are classic problems in computer science. Binary search finds a value in a sorted list by "
    "checking the middle item and discarding half of the list at each step, so a list of a million items needs only "
    "about twenty comparisons. Sorting algorithms such as merge sort put n items in order in about n log n steps.",
    "The command line looks old-fashioned, but it is powerful. Commands like ls list files, cd changes the folder, and "
    "grep searches text; small tools can be combined with pipes, as in cat log.txt | grep error | wc -l, which counts "
    "the lines that mention an error. Scripts turn a sequence of such commands into a repeatable recipe.",
    "Team sports teach cooperation. In football, basketball or volleyball, a player who passes at the right moment is "
    "often more valuable than one who tries to do everything alone. Good coaches praise effort, explain mistakes "
    "calmly and make sure every child gets time on the field, whatever the score.",
    "Dates and times are written in many ways. Some countries write 03/04/2025 for the third of April and others for "
    "the fourth of March, which causes confusion. The international format, 2025-04-03, avoids the problem and also "
    "sorts correctly. For times, a 24-hour clock writes 18:30 instead of 6:30 p.m.",
    # Science.
    "Water moves in a cycle. The sun heats the oceans, lakes and rivers, and water evaporates into the air as vapour. "
    "As the vapour rises, it cools and condenses into tiny droplets that form clouds. When the droplets grow heavy "
    "enough, they fall as rain or snow, flow into rivers and soak into the ground, and the cycle begins again.",
    "Plants make their own food through photosynthesis. Using energy from sunlight, they turn carbon dioxide from the "
    "air and water from the soil into sugar and oxygen. The green pigment chlorophyll, found in the leaves, absorbs "
    "red and blue light and reflects green, which is why most plants look green to us.",
    "Gravity is the force that pulls objects toward one another. On Earth it gives us weight and keeps our feet on the "
    "ground; in space it keeps the Moon in orbit around the Earth and the planets in orbit around the Sun. Near the "
    "surface of the Earth, a falling object speeds up by about 9.8 metres per second every second, if we ignore air "
    "resistance.",
    "Every living thing is made of cells. Some organisms, like bacteria, consist of a single cell, while the human "
    "body contains tens of trillions of them. Each cell has a membrane that controls what goes in and out, and most "
    "have a nucleus that holds the genetic instructions, written in DNA, for building proteins.",
    "Electricity is the flow of electric charge, usually carried by electrons moving through a wire. The voltage is "
    "like the pressure that pushes the charge, the current is how much charge flows each second, and the resistance "
    "is how strongly the material opposes the flow. Ohm's law ties them together: voltage equals current times "
    "resistance.",
    "Stars are huge balls of hot gas, mostly hydrogen and helium. In their cores, hydrogen nuclei fuse into helium and "
    "release enormous amounts of energy, which is why stars shine. Our Sun is a fairly ordinary, middle-aged star, "
    "about 4.6 billion years old, and its light takes roughly eight minutes to reach the Earth.",
    "Vaccines train the immune system to recognise a germ without causing the disease. They contain a harmless piece "
    "or a weakened form of the virus or bacterium, and the body responds by making antibodies and memory cells. If the "
    "real germ arrives later, the immune system can react quickly and strongly.",
    "Sound is a vibration that travels through air, water or solid materials as a wave. The pitch of a sound depends "
    "on its frequency, measured in hertz, and its loudness depends on the size of the vibration. Humans can hear from "
    "about 20 hertz to 20,000 hertz, although the upper limit drops with age.",
    "The climate is the long-term pattern of weather in a place, averaged over decades. Burning coal, oil and gas adds "
    "carbon dioxide to the atmosphere, which traps heat and warms the planet. Scientists measure this change with "
    "thermometers, satellites, ice cores and ocean buoys, and the records agree that the last few decades have been "
    "the warmest in modern history.",
    "A good experiment changes one thing at a time. If you want to know whether fertilizer helps tomatoes grow, plant "
    "two groups in the same soil, give them the same water and light, and add fertilizer to only one group. Measure "
    "both, repeat the test, and be honest about results that surprise you.",
    # Programming.
    "A variable is a name that refers to a value. In Python you can write count = 0, then count = count + 1, and the "
    "name count now refers to 1. Good variable names describe what the value means, such as total_price or "
    "max_retries, rather than what type it has. Short names like i and j are fine for loop counters.",
    "Functions let you package a piece of logic and reuse it. A function takes inputs, called arguments, does some "
    "work and returns a result. Keeping functions small, with one clear job each, makes code easier to read, test and "
    "change. For example, def area(width, height): return width * height is short and obvious.",
    "Loops repeat work. A for loop walks over the items of a list, a string or a range of numbers: for name in names: "
    "print(name). A while loop keeps going as long as a condition is true, so make sure the condition eventually "
    "becomes false, or the program will never stop.",
    "Debugging is detective work. Read the error message carefully, including the file name and the line number. "
    "Reproduce the problem with the smallest possible input, then form a guess and test it. Printing intermediate "
    "values or stepping through the code with a debugger often shows where the actual behaviour differs from what you "
    "expected.",
    "Version control keeps the history of a project. With git, you commit your changes with a short message that says "
    "why you made them, you create a branch to try an idea without breaking the main code, and you merge the branch "
    "when it works. If something goes wrong, you can always look at or return to an earlier version.",
    "Automated tests check that code does what it should. A unit test calls one function with a known input and "
    "compares the result with the expected output, for example assert add(2, 3) == 5. Running the whole test suite "
    "before every change catches mistakes early, when they are cheap to fix.",
    "Data often arrives as a CSV file, where each line is a row and commas separate the columns. A JSON file stores "
    'nested objects and lists, such as {"name": "Ada", "age": 36}, and JSON Lines puts one object on each line. '
    "Whatever the format, check the data before using it: count the rows, look for missing values, and print a few "
    "examples.",
    "A neural network is a function with many adjustable numbers, called parameters. During training, it makes a "
    "prediction, a loss function measures how wrong the prediction is, and gradient descent nudges every parameter a "
    "little in the direction that reduces the loss. After many small steps, on many examples, the network learns "
    "patterns that generalise to new data.",
    "Language models read text as tokens, which are pieces of words. A tokenizer splits a sentence such as "
    '"Unbelievable results!" into smaller units, for instance "Un", "believ", "able", " results" and "!", '
    "and maps each one to a number. The model then predicts which token is likely to come next.",
    "Writing readable code is a courtesy to your future self. Use consistent formatting, keep lines reasonably short, "
    "and write a brief docstring that explains what a function does and what it returns. Comments should explain why "
    "something is done, because the code itself already shows what is done.",
    "When a program is slow, measure before you optimise. A profiler shows which functions take the most time; often "
    "90% of the time is spent in 10% of the code. Better algorithms, such as using a dictionary for lookups instead of "
    "searching a list, usually help far more than small tweaks.",
    # Safety.
    "Kitchen safety starts with a few simple rules. Keep knives sharp, because dull blades slip; turn pot handles "
    "toward the back of the stove; and never leave hot oil unattended. If a small pan fire starts, cover it with a lid "
    "and turn off the heat. Never pour water on burning oil.",
    "Online safety is mostly about good habits. Use a different, long password for every important account, ideally "
    "stored in a password manager, and turn on two-factor authentication. Be suspicious of messages that create "
    "urgency, ask for codes, or contain unexpected links, even if they seem to come from your bank or a friend.",
    "On the road, the most important safety features are attention and patience. Put the phone away, keep a safe "
    "distance from the car in front, and slow down in rain, fog or snow. Cyclists and pedestrians are hard to see at "
    "night, so drivers should check twice at crossings, and cyclists should use lights.",
    "Basic first aid can make a real difference. For a small cut, clean the wound with water, apply gentle pressure "
    "with a clean cloth, and cover it with a bandage. For a burn, cool the area under running water for twenty "
    "minutes. In any serious emergency, call the local emergency number first and follow the instructions of the "
    "operator.",
    "A helpful assistant answers questions clearly and honestly, but it should not help anyone hurt people. When a "
    "request would cause harm, such as injuring someone, stealing, or spreading private information, a responsible "
    "assistant declines, explains briefly why, and where possible suggests a safer alternative, like talking to a "
    "counsellor or contacting the proper authorities.",
    "Being helpful and being harmless can pull in different directions. A vague answer avoids harm but does not help; "
    "a detailed answer to a dangerous request helps the wrong goal. Safety research tries to train models that give "
    "specific, useful answers to ordinary questions while refusing the small number of requests that would lead to "
    "real damage.",
    "Workplace safety depends on everyone. Report spills, broken equipment and blocked fire exits as soon as you see "
    "them, wear the protective gear your job requires, and know where the nearest first aid kit is. Companies that "
    "encourage people to speak up about risks tend to have fewer accidents.",
    "Medicines are safe when used as directed. Read the label, take the stated dose, and ask a pharmacist before "
    "combining different products, because some ingredients appear in several of them. Keep all medicines out of the "
    "reach of children, and return old or unused ones to a pharmacy instead of throwing them away.",
    "At home, smoke alarms save lives. Test them once a month, replace the batteries every year, and plan two ways out "
    "of every room. Children should practise the plan, so that in a real fire they know to crawl low under the smoke, "
    "leave quickly, and never go back inside for toys or pets.",
    "If someone you know seems very sad or talks about not wanting to live, take it seriously. Listen without judging, "
    "stay with them if they are in danger, and help them contact a doctor, a crisis line or emergency services. Asking "
    "directly about how they feel does not make things worse; it often brings relief.",
    "Fair treatment is part of a safe community. Hiring, renting and serving customers should depend on skills, "
    "references and behaviour, never on race, religion, gender, disability or where someone was born. Many countries "
    "have laws against discrimination, and organisations that follow them benefit from a wider pool of talent.",
    "Protecting the environment often comes down to ordinary choices. Dispose of batteries, paint and motor oil at a "
    "collection point rather than in the drain, repair things before replacing them, and walk or cycle for short "
    "trips. Small actions, repeated by millions of people, add up to a large effect.",
)


def build_corpus(num_rows: int = NUM_ROWS, seed: int = SEED) -> str:
    """The corpus text: one synthetic conversation per line (both responses of each row), then the prose.

    Args:
        num_rows: how many synthetic rows to render (two lines each).
        seed: seed of the synthetic generator.

    Returns:
        The whole file content, ending with a newline.
    """
    lines = []
    for row in generate_pku_saferlhf_rows(num_rows, seed=seed):
        for k in (0, 1):
            lines.append(TEMPLATE.format(prompt=row["prompt"], response=row[f"response_{k}"]))
    lines.extend(PROSE)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or, with ``--check``, verify) the tokenizer corpus.

    Args:
        argv: command-line arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status: 0 on success, 1 when ``--check`` finds a difference.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the corpus")
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args(argv)
    text = build_corpus()
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise SystemExit(f"corpus would be {size:,} bytes, over the {MAX_BYTES:,}-byte limit")
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        if current != text:
            print(f"{args.output} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date ({size:,} bytes)")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    words = sum(len(p.split()) for p in PROSE)
    print(f"wrote {args.output} ({size:,} bytes, {2 * NUM_ROWS:,} conversations, {words:,} words of prose)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
