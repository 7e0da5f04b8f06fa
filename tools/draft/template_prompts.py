"""The template half of the first demo-draft data set: user turns from templates x topics
(questions, how-tos, lists, comparisons, code, math word problems, rewrites, casual chat)."""
from __future__ import annotations

import random

THINGS = """photosynthesis|black holes|the French Revolution|climate change|the human heart|volcanoes|
the internet|electric cars|the Roman Empire|honey bees|the moon|vaccines|solar panels|coffee|
the stock market|inflation|democracy|the water cycle|earthquakes|dinosaurs|the Great Wall of China|
artificial intelligence|machine learning|blockchain|the Renaissance|jazz music|the Olympic Games|
rainbows|tides|the immune system|DNA|gravity|electricity|magnets|the printing press|World War II|
the Industrial Revolution|the Amazon rainforest|coral reefs|the Sahara desert|penguins|dolphins|
sharks|tigers|owls|cats|dogs|horses|butterflies|ants|mushrooms|bread|chocolate|tea|cheese|rice|
pizza|sushi|olive oil|vitamins|protein|sugar|meditation|yoga|running|swimming|chess|football|
basketball|tennis|the piano|the violin|poetry|Shakespeare|the Mona Lisa|ancient Egypt|the pyramids|
Mount Everest|the Pacific Ocean|the Nile|the solar system|Mars|Jupiter|stars|comets|the Big Bang|
atoms|light|sound|heat|friction|recycling|plastic pollution|wind power|nuclear energy|batteries|
smartphones|computers|the cloud|passwords|email|social media|video games|movies|books|libraries|
museums|trains|airplanes|bicycles|bridges|skyscrapers|gardens|trees|flowers|bees|soil|rain|snow|
hurricanes|deserts|mountains|rivers|lakes|islands|cities|villages|money|taxes|banks|credit cards|
budgets|interest rates|resumes|job interviews|teamwork|leadership|friendship|kindness|happiness|
habits|time|memory|sleep|dreams|the brain|muscles|bones|teeth|skin|eyes|hearing|allergies|
the common cold|headaches|stress|exercise|nutrition|breakfast|fruit|vegetables|spices|baking|
camping|hiking|travel|maps|languages|grammar|history|philosophy|mathematics|prime numbers|
fractions|geometry|statistics|probability|algebra|physics|chemistry|biology|economics|psychology|
Python|JavaScript|databases|algorithms|sorting|recursion|the Moon landing|Albert Einstein|
Marie Curie|Isaac Newton|Leonardo da Vinci|Cleopatra|Napoleon|Abraham Lincoln|Nelson Mandela|
Mahatma Gandhi|Charles Darwin|Ada Lovelace|Beethoven|Mozart|Picasso|Van Gogh|the Beatles|
fireworks|candles|glass|paper|cotton|wool|silk|gold|diamonds|salt|oxygen|carbon|hydrogen|
the ozone layer|the Arctic|Antarctica|the rainforest|wolves|elephants in the wild|giraffes|
octopuses|frogs|snakes|eagles|parrots|whales|bats|spiders|seasons|calendars|clocks|the weather|
thunderstorms|fog|wind|the desert climate|farming|fishing|cooking pasta|tomatoes|potatoes|apples|
bananas|oranges|garlic|onions|soup|salads|sandwiches|smoothies|pancakes|cookies|birthdays|
weddings|holidays|New Year|music festivals|art|painting|photography|dancing|singing|theater|
comedy|podcasts|newspapers|radio|television|robots|drones|3D printing|space travel|satellites|
telescopes|microscopes|germs|bacteria|viruses|antibiotics|hospitals|nurses|doctors|teachers|
schools|universities|homework|exams|reading|writing|public speaking|negotiation|marketing|
small businesses|startups|remote work|online shopping|cars|traffic|public transport|electric bikes|
houseplants|pets|aquariums|knitting|woodworking|board games|puzzles|magic tricks|origami""".replace("\n", "").split("|")

ACTIVITIES = """learning a new language|cooking dinner for friends|studying for an exam|saving money|
staying focused|running a marathon|starting a garden|writing a novel|learning to code|
taking better photos|making new friends|preparing for a job interview|traveling on a budget|
staying healthy in winter|reducing screen time|cleaning the house|moving to a new city|
training a puppy|learning to swim|drawing portraits|playing chess|speaking in public|
managing time|waking up early|drinking more water|eating more vegetables|reading more books|
keeping a journal|learning math|baking bread|planning a vacation|organizing a closet|
working in a team|starting a business|riding a bike|painting a room|hiking in the mountains|
caring for houseplants|meditating|lowering stress|writing an email to a boss|
buying a used car|renting an apartment|making a budget|learning the piano|running a meeting|
teaching kids to read|recycling at home|saving energy at home|staying motivated|
giving feedback|making coffee|packing for a trip|cooking rice|decorating a small room|
preparing a presentation|writing a cover letter|learning history|improving handwriting|
building a website|debugging code|taking notes in class|remembering names|being more confident""".replace("\n", "").split("|")

COUNTRIES = """Germany|Italy|Spain|Japan|China|India|Brazil|Canada|Australia|Mexico|Egypt|Kenya|Nigeria|
Argentina|Peru|Chile|Norway|Sweden|Finland|Poland|Greece|Turkey|Russia|Thailand|Vietnam|Indonesia|
South Korea|Portugal|Ireland|the Netherlands|Belgium|Switzerland|Austria|New Zealand|Morocco|
Colombia|Cuba|Iceland|Denmark|Ukraine""".replace("\n", "").split("|")

CODE_TASKS = """checks if a number is prime|returns the factorial of n|counts the vowels in a string|
finds the largest number in a list|checks if a word is a palindrome|sums the even numbers in a list|
converts Celsius to Fahrenheit|removes duplicates from a list|returns the Fibonacci sequence up to n|
sorts a list of names alphabetically|counts words in a sentence|merges two dictionaries|
computes the average of a list|finds the second largest element in a list|checks if two strings are anagrams|
flattens a nested list|returns the GCD of two numbers|capitalizes every word in a sentence|
reads a file and prints its lines|generates a random password""".replace("\n", "").split("|")

SENTENCES = """the meeting has been moved to friday afternoon|i think we should try the new restaurant downtown|
our team finished the project two days early|the weather was terrible so we stayed inside|
please send me the report before noon|my cat knocked the glass off the table again|
the train was late and i missed my appointment|we are excited to announce our new product|
she learned to play the guitar in six months|the library will be closed on monday|
i can't come to the party because i have to work|this phone battery dies way too fast|
the kids built a huge sandcastle at the beach|thanks a lot for helping me move last weekend|
the price of groceries keeps going up""".replace("\n", "").split("|")

Q_TEMPLATES = [
    "What is {t}?", "Explain {t} in simple terms.", "How does {t} work?", "Tell me about {t}.",
    "Why is {t} important?", "Give me three interesting facts about {t}.",
    "Write a short poem about {t}.", "Write a haiku about {t}.", "What are the benefits of {t}?",
    "Summarize the history of {t} in a few sentences.", "Explain {t} to a five-year-old.",
    "What are some common misconceptions about {t}?", "List five things everyone should know about {t}.",
    "Write a short story about {t}.", "Can you describe {t} in one paragraph?",
    "What are the pros and cons of {t}?", "Tell me a joke about {t}.", "What is the origin of {t}?",
    "Write a tweet about {t}.", "Give me a fun fact about {t}.", "How would you teach someone about {t}?",
    "What questions should I ask to learn more about {t}?", "Describe {t} in three words and explain why.",
    "What is the most surprising thing about {t}?", "Is {t} good or bad? Explain.",
]
A_TEMPLATES = [
    "Give me three tips for {a}.", "How do I get started with {a}?", "What are common mistakes when {a}?",
    "Can you make a simple plan for {a}?", "What do I need for {a}?", "I'm nervous about {a}. Any advice?",
    "What's the best way to approach {a}?", "List the steps for {a}.", "How long does it take to get good at {a}?",
    "Give me a checklist for {a}.", "Why do people struggle with {a}?", "Write a motivational message about {a}.",
]
CHAT = [
    "Hi! How are you today?", "Hello, who are you?", "I'm bored. Any ideas?", "Can you tell me a joke?",
    "Good morning!", "What can you help me with?", "I had a rough day at work.", "Thank you for your help!",
    "What's your favorite book?", "Do you like music?", "Tell me something that will make me smile.",
    "I can't decide what to have for dinner.", "What should I do this weekend?", "Can you recommend a movie?",
    "I feel lonely today.", "What's a good name for a dog?", "Tell me a riddle.", "Are you a robot?",
    "What is the meaning of life?", "Give me a compliment.", "Hey, what's up?", "I just got a new job!",
    "Can you help me write a birthday message for my mom?", "What is a good hobby to pick up?",
]


def _math_prompt(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 60), rng.randint(2, 30), rng.randint(2, 12)
    name = rng.choice(["Tom", "Anna", "Maria", "Ali", "Sam", "Lena", "Ken", "Priya", "Joe", "Mia"])
    item = rng.choice(["apples", "books", "pencils", "cookies", "stickers", "marbles", "cards", "eggs"])
    return rng.choice([
        f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
        f"{name} had {a + b} {item} and gave away {b}. How many are left?",
        f"If one box holds {c} {item}, how many {item} are in {b} boxes?",
        f"A train travels {a * 10} km in {c} hours. What is its average speed?",
        f"What is {a} times {b}?", f"What is {a * c} divided by {c}?", f"What is {a}% of {b * 10}?",
        f"{name} saves {b} dollars a week. How much will {name} have after {c} weeks?",
        f"A rectangle is {a} cm long and {b} cm wide. What is its area?",
        f"Solve for x: {c}x + {b} = {c * a + b}.", f"Is {a * 2 + 1} a prime number?",
        f"How many minutes are in {c} hours?", f"Convert {a} kilometers to meters.",
    ])


def template_prompt(rng: random.Random) -> str:
    """One prompt from the templates, its kind drawn by share (questions 40%, how-tos 18%, ...)."""
    r = rng.random()
    if r < 0.40:
        return rng.choice(Q_TEMPLATES).format(t=rng.choice(THINGS))
    if r < 0.58:
        return rng.choice(A_TEMPLATES).format(a=rng.choice(ACTIVITIES))
    if r < 0.61:
        t1, t2 = rng.sample(THINGS, 2)
        return rng.choice(["Compare {} and {}.", "What is the difference between {} and {}?",
                           "Which is more interesting, {} or {}?"]).format(t1, t2)
    if r < 0.70:
        c = rng.choice(COUNTRIES)
        return rng.choice(["What is the capital of {}?", "Tell me about the culture of {}.",
                           "What food is {} famous for?", "What should I see if I visit {}?",
                           "What language is spoken in {}?"]).format(c)
    if r < 0.78:
        task = rng.choice(CODE_TASKS)
        lang = rng.choice(["Python", "Python", "JavaScript"])
        return rng.choice(["Write a {l} function that {t}.", "How do I write code in {l} that {t}?",
                           "Show me a short {l} example that {t}."]).format(l=lang, t=task)
    if r < 0.88:
        return _math_prompt(rng)
    if r < 0.96:
        s = rng.choice(SENTENCES)
        return rng.choice(["Rewrite this sentence to be more formal: \"{}\"",
                           "Fix the grammar and capitalization: \"{}\"", "Translate to French: \"{}\"",
                           "Make this sentence sound more friendly: \"{}\"",
                           "Summarize in five words: \"{}\"", "Turn this into a question: \"{}\"",
                           "Write a reply to this message: \"{}\""]).format(s)
    return rng.choice(CHAT) + " " + rng.choice(["Also, " + rng.choice(Q_TEMPLATES).format(
        t=rng.choice(THINGS)).lower(), ""]).strip()


def build_prompts(n: int, seed: int, exclude: set[str]) -> list[str]:
    """n distinct prompts: the casual CHAT lines, then template prompts, shuffled; none in exclude."""
    rng = random.Random(seed)
    out: list[str] = []
    seen = {p.lower() for p in exclude}

    def add(p: str) -> None:
        if p.lower() not in seen:
            seen.add(p.lower())
            out.append(p)

    for c in CHAT:
        add(c)
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        add(template_prompt(rng))
    rng.shuffle(out)
    return out[:n]
