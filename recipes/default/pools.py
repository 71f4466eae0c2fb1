"""The vocabulary of the default model's synthetic data: entities, tools, templates, topics.

Every pool is split in two: what the training sets may show (`train`) and what only the
held-out test sets show (`test`). The split is fixed here, not drawn, so the held-out sets never
share an entity, a tool, a template or a topic with the training sets (`tests/test_default_data.py`
checks the generated files).
"""

from __future__ import annotations

# ---- entities: {kind: (train values, test values)} -------------------------------------------
ENTITIES = {
    "city": (
        "Paris London Berlin Madrid Rome Vienna Prague Dublin Oslo Lisbon Athens Warsaw Zurich Munich Milan "
        "Naples Seville Porto Lyon Nice Hamburg Cologne Krakow Budapest Helsinki Stockholm Copenhagen Brussels "
        "Amsterdam Toronto Chicago Boston Denver Seattle Austin Miami Tokyo Osaka Seoul Sydney".split(),
        "Montreal Lima Nairobi Cairo Hanoi Manila Quito Riga Tallinn Bergen Geneva Bologna".split(),
    ),
    "person": (
        "Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Liam Mia Noah Olivia Peter Quinn Rosa "
        "Sam Tina Umar Vera Walter Xena Yusuf Zoe Anna Ben Clara Dan Eva Felix Hugo Ida Jonas Lena Max Nina "
        "Oscar Paula".split(),
        "Tobias Ingrid Malik Sofia Ravi Helga Diego Yara Kenji Amara Lucas Freya".split(),
    ),
    "surname": (
        "Smith Jones Brown Taylor Wilson Davies Evans Thomas Johnson Roberts Walker Wright Robinson Thompson "
        "White Hughes Edwards Green Hall Wood Harris Lewis Martin Jackson Clarke Clark Turner Hill Scott "
        "Cooper".split(),
        "Okafor Lindqvist Moreau Castillo Nakamura Petrov Haddad Kowalski".split(),
    ),
    "item": (
        "apples pears oranges cookies pencils stickers marbles books cards stamps shells coins candles cups "
        "plates bottles boxes tickets flowers eggs".split(),
        "lemons crayons buttons ribbons kites".split(),
    ),
    "company": (
        "Acme Globex Initech Umbrella Stark Wayne Hooli Vandelay Wonka Cyberdyne Soylent Tyrell".split(),
        "Nakatomi Oscorp Gringotts Monarch".split(),
    ),
    "product": (
        "laptop phone tablet camera speaker monitor keyboard printer router headset watch charger".split(),
        "drone projector scanner turntable".split(),
    ),
    "currency": ("USD EUR GBP JPY CHF CAD AUD SEK".split(), "NOK PLN BRL INR".split()),
    "language": ("French German Spanish Italian Dutch Portuguese Polish".split(), "Swedish Turkish Greek".split()),
    "symbol": ("AAPL MSFT GOOG AMZN TSLA NVDA META IBM ORCL INTC".split(), "SAP ASML SONY TM".split()),
    "genre": ("jazz rock pop classical blues folk".split(), "reggae techno opera".split()),
    "color": ("red blue green yellow black white".split(), "teal maroon ivory".split()),
}

# ---- tools ------------------------------------------------------------------------------------
# (name, description, [(parameter, kind, description)], request phrase, {result field: kind}, answer)
# Kinds that are not entities are drawn as numbers / codes by data.value_of.
TRAIN_TOOLS = [
    (
        "get_weather",
        "Get the current weather in a city",
        [("city", "city", "The city name")],
        "the weather in {city}",
        {"temperature": "temp", "condition": "condition"},
        "It is {temperature} degrees and {condition} in {city}.",
    ),
    (
        "get_time",
        "Get the local time in a city",
        [("city", "city", "The city name")],
        "the local time in {city}",
        {"time": "clock"},
        "The local time in {city} is {time}.",
    ),
    (
        "get_stock_price",
        "Get the latest price of a stock",
        [("symbol", "symbol", "The ticker symbol")],
        "the stock price of {symbol}",
        {"price": "price"},
        "{symbol} is trading at {price}.",
    ),
    (
        "convert_currency",
        "Convert an amount from one currency to another",
        [
            ("amount", "amount", "The amount"),
            ("source", "currency", "From currency"),
            ("target", "currency", "To currency"),
        ],
        "{amount} {source} in {target}",
        {"result": "price"},
        "{amount} {source} is {result} {target}.",
    ),
    (
        "send_email",
        "Send an email to a person",
        [("to", "person", "The recipient"), ("subject", "subject", "The subject line")],
        "an email to {to} about {subject}",
        {"status": "status"},
        "The email to {to} was {status}.",
    ),
    (
        "book_table",
        "Book a table at a restaurant",
        [("city", "city", "The city"), ("people", "count", "Number of people")],
        "a table for {people} in {city}",
        {"status": "status"},
        "Your table for {people} in {city} is {status}.",
    ),
    (
        "translate_text",
        "Translate a word into a language",
        [("text", "word", "The text"), ("language", "language", "Target language")],
        "the word {text} translated into {language}",
        {"translation": "word"},
        "In {language}, {text} is {translation}.",
    ),
    (
        "get_population",
        "Get the population of a city",
        [("city", "city", "The city name")],
        "the population of {city}",
        {"population": "big"},
        "{city} has about {population} people.",
    ),
    (
        "find_contact",
        "Find the phone number of a person",
        [("name", "person", "The person")],
        "the phone number of {name}",
        {"phone": "phone"},
        "The phone number of {name} is {phone}.",
    ),
    (
        "get_order_status",
        "Get the status of an order",
        [("order_id", "order", "The order id")],
        "the status of order {order_id}",
        {"status": "status"},
        "Order {order_id} is {status}.",
    ),
    (
        "search_products",
        "Search the catalog for a product",
        [("query", "product", "What to search for")],
        "a {query} in the catalog",
        {"count": "count"},
        "I found {count} results for {query}.",
    ),
    (
        "play_music",
        "Play music of a genre",
        [("genre", "genre", "The genre")],
        "some {genre} music",
        {"status": "status"},
        "Now playing {genre} music.",
    ),
    (
        "set_alarm",
        "Set an alarm for a time",
        [("time", "clock", "The time")],
        "an alarm for {time}",
        {"status": "status"},
        "Your alarm for {time} is {status}.",
    ),
    (
        "get_company_revenue",
        "Get the yearly revenue of a company",
        [("company", "company", "The company")],
        "the yearly revenue of {company}",
        {"revenue": "price"},
        "{company} made {revenue} million last year.",
    ),
    (
        "create_reminder",
        "Create a reminder with a note",
        [("note", "subject", "What to remember"), ("time", "clock", "When")],
        "a reminder about {note} at {time}",
        {"status": "status"},
        "I will remind you about {note} at {time}.",
    ),
    (
        "get_exchange_rate",
        "Get the exchange rate between two currencies",
        [("base", "currency", "Base currency"), ("quote", "currency", "Quote currency")],
        "the exchange rate from {base} to {quote}",
        {"rate": "rate"},
        "One {base} buys {rate} {quote}.",
    ),
    (
        "check_flight",
        "Check the status of a flight",
        [("flight", "flight", "The flight number")],
        "the status of flight {flight}",
        {"status": "status"},
        "Flight {flight} is {status}.",
    ),
    (
        "get_distance",
        "Get the distance between two cities",
        [("origin", "city", "Start city"), ("destination", "city", "End city")],
        "the distance from {origin} to {destination}",
        {"km": "big"},
        "It is {km} km from {origin} to {destination}.",
    ),
    (
        "order_product",
        "Order a product",
        [("product", "product", "The product"), ("quantity", "count", "How many")],
        "{quantity} of the {product}",
        {"status": "status"},
        "Your order of {quantity} {product} is {status}.",
    ),
    (
        "get_user_age",
        "Get the age of a user",
        [("name", "person", "The user name")],
        "the age of {name}",
        {"age": "count"},
        "{name} is {age} years old.",
    ),
    (
        "paint_room",
        "Schedule painting a room in a color",
        [("color", "color", "The color")],
        "painting the room {color}",
        {"status": "status"},
        "Painting the room {color} is {status}.",
    ),
    (
        "get_news",
        "Get the latest news about a company",
        [("company", "company", "The company")],
        "the latest news about {company}",
        {"headline": "subject"},
        "Latest on {company}: {headline}.",
    ),
]
TEST_TOOLS = [
    (
        "get_air_quality",
        "Get the air quality index in a city",
        [("city", "city", "The city name")],
        "the air quality in {city}",
        {"aqi": "count"},
        "The air quality index in {city} is {aqi}.",
    ),
    (
        "lookup_employee",
        "Look up the department of an employee",
        [("name", "person", "The employee")],
        "the department of {name}",
        {"department": "subject"},
        "{name} works in {department}.",
    ),
    (
        "get_dividend",
        "Get the dividend of a stock",
        [("symbol", "symbol", "The ticker symbol")],
        "the dividend of {symbol}",
        {"dividend": "rate"},
        "{symbol} pays a dividend of {dividend}.",
    ),
    (
        "rent_car",
        "Rent a car in a city for some days",
        [("city", "city", "The city"), ("days", "count", "Number of days")],
        "a car in {city} for {days} days",
        {"status": "status"},
        "Your car in {city} for {days} days is {status}.",
    ),
    (
        "get_sunrise",
        "Get the sunrise time in a city",
        [("city", "city", "The city name")],
        "the sunrise time in {city}",
        {"time": "clock"},
        "The sun rises at {time} in {city}.",
    ),
    (
        "count_stock",
        "Count the units of a product in stock",
        [("product", "product", "The product")],
        "how many {product} units are in stock",
        {"units": "count"},
        "There are {units} {product} units in stock.",
    ),
]

# Requests: the phrase of the tool goes into {phrase}; the verb depends on whether the tool reads
# or does something, so both kinds read naturally.
TRAIN_REQUESTS = [
    "What is {phrase}?",
    "Can you check {phrase}?",
    "Please look up {phrase}.",
    "I need {phrase}.",
    "Find {phrase} for me.",
    "Get me {phrase}, please.",
    "Could you tell me {phrase}?",
    "Quick question: {phrase}?",
    "Help me with {phrase}.",
    "Please handle {phrase}.",
]
TEST_REQUESTS = ["I would like to know {phrase}.", "Hey, sort out {phrase} for me!", "Do you know {phrase}?"]
SYSTEM_PROMPTS = ("You are a helpful assistant with access to tools.", "You are an agent. Use the tools when needed.")
TEST_SYSTEM_PROMPTS = ("You are an assistant that can call functions.",)

# ---- data extraction --------------------------------------------------------------------------
# (document kind, fields {name: kind}, train templates, test templates)
DOCUMENTS = [
    (
        "invoice",
        {"invoice_id": "invoice", "customer": "fullname", "date": "date", "total": "price", "currency": "currency"},
        [
            "Invoice {invoice_id} was issued to {customer} on {date}. The total due is {total} {currency}.",
            "On {date} we billed {customer} {total} {currency} (invoice {invoice_id}).",
            "Customer: {customer}\nInvoice number: {invoice_id}\nDate: {date}\nAmount: {total} {currency}",
        ],
        ["Dear {customer}, please pay {total} {currency} for invoice {invoice_id}, dated {date}."],
    ),
    (
        "employee",
        {"name": "fullname", "role": "role", "city": "city", "start_date": "date"},
        [
            "{name} joined as a {role} in our {city} office on {start_date}.",
            "New hire: {name}. Position: {role}. Location: {city}. Start date: {start_date}.",
            "Starting {start_date}, {name} will work in {city} as a {role}.",
        ],
        ["Please welcome {name}, our new {role}, who starts on {start_date} at the {city} site."],
    ),
    (
        "shipment",
        {"order_id": "order", "destination": "city", "weight_kg": "count", "carrier": "company"},
        [
            "Order {order_id} ships to {destination} with {carrier}. It weighs {weight_kg} kg.",
            "Shipment details: order {order_id}, carrier {carrier}, weight {weight_kg} kg, going to {destination}.",
            "{carrier} will deliver order {order_id} ({weight_kg} kg) to {destination}.",
        ],
        ["Your parcel for order {order_id} is on its way to {destination}; {carrier} carries its {weight_kg} kg."],
    ),
    (
        "event",
        {"event": "event", "city": "city", "date": "date", "attendees": "big"},
        [
            "The {event} takes place in {city} on {date} and expects {attendees} visitors.",
            "Event: {event}\nWhere: {city}\nWhen: {date}\nExpected attendance: {attendees}",
        ],
        ["About {attendees} people will come to {city} for the {event} on {date}."],
    ),
]
TEST_DOCUMENTS = [
    (
        "review",
        {"product": "product", "reviewer": "fullname", "stars": "count", "date": "date"},
        [],
        ["{reviewer} gave the {product} {stars} stars in a review posted on {date}."],
    ),
]
EXTRACT_REQUESTS = [
    "Extract {fields} from the text below as JSON.\n\n{doc}",
    "Read this {kind} and return JSON with the keys {fields}.\n\n{doc}",
    "{doc}\n\nGive me {fields} as a JSON object.",
]
TEST_EXTRACT_REQUESTS = ["Turn the following {kind} into JSON ({fields}):\n{doc}"]

# ---- arithmetic word problems: (question, [steps]) with {a} {b} {c} and entities ---------------
# Each step is (op, left, right, result name); the last result is the answer.
MATH_TRAIN = [
    (
        "{p} has {a} {item}. {p} buys {b} more and then gives {c} to {q}. How many {item} does {p} have now?",
        [("+", "a", "b", "s"), ("-", "s", "c", "r")],
    ),
    (
        "A box holds {a} {item}. {p} fills {b} boxes and then finds {c} extra {item}. How many {item} are there?",
        [("*", "a", "b", "s"), ("+", "s", "c", "r")],
    ),
    (
        "{p} has {a} {item} and {q} has {b} {item}. They put them together and then use {c}. How many {item} are left?",
        [("+", "a", "b", "s"), ("-", "s", "c", "r")],
    ),
    (
        "{p} buys {a} packs of {item} with {b} in each pack. {p} uses {c} of them. How many {item} are left?",
        [("*", "a", "b", "s"), ("-", "s", "c", "r")],
    ),
    (
        "{p} had {a} {item}, lost {b} of them, and then got {c} more from {q}. How many {item} does {p} have?",
        [("-", "a", "b", "s"), ("+", "s", "c", "r")],
    ),
    (
        "There are {a} {item} in a shop. {b} more arrive in the morning and {c} more in the evening. "
        "How many {item} are in the shop?",
        [("+", "a", "b", "s"), ("+", "s", "c", "r")],
    ),
    (
        "{p} earns {a} dollars a day for {b} days and spends {c} dollars. How many dollars are left?",
        [("*", "a", "b", "s"), ("-", "s", "c", "r")],
    ),
]
MATH_TEST = [
    (
        "{q} started with {a} {item}. After a trade, {q} received {b} times as many, then sold {c}. "
        "How many {item} does {q} own now?",
        [("*", "a", "b", "s"), ("-", "s", "c", "r")],
    ),
    (
        "A class collected {a} {item} on Monday and {b} on Tuesday, then donated {c}. How many {item} remain?",
        [("+", "a", "b", "s"), ("-", "s", "c", "r")],
    ),
]

# ---- instructions with verifiable constraints --------------------------------------------------
TOPICS = (
    "gardening cooking cycling chess photography music history astronomy swimming painting coffee tea "
    "robots rivers mountains forests bread volcanoes trains bicycles libraries oceans birds bees".split(),
    "glaciers pottery kayaking origami lighthouses".split(),
)
ADJECTIVES = "calm useful popular simple old rich quiet bright".split()
TRAIN_WRITE = ["Write a short text about {topic}.", "Tell me about {topic}.", "Describe {topic} briefly."]
TEST_WRITE = ["Compose a few lines on {topic}."]
# instruction id -> (train phrasings, test phrasings); {n}, {words}, {phrase} filled by data.py
CONSTRAINTS = {
    "change_case:english_lowercase": (
        ["Use only lowercase letters.", "Write everything in lowercase."],
        ["No capital letters at all."],
    ),
    "change_case:english_capital": (
        ["Write everything in capital letters.", "Use only uppercase letters."],
        ["Your whole reply must be in CAPS."],
    ),
    "punctuation:no_comma": (["Do not use any commas.", "Avoid commas."], ["Commas are not allowed."]),
    "keywords:existence": (["Include the words {words}.", "Mention {words}."], ["Be sure to use {words}."]),
    "detectable_format:number_bullet_lists": (
        ["Answer with exactly {n} bullet points.", "Use {n} bullet points."],
        ["Give {n} bullets, no more and no less."],
    ),
    "detectable_format:title": (
        ["Add a title in double angle brackets, like <<title>>.", "Start with a title wrapped in << and >>."],
        ["Give it a title inside <<these>>."],
    ),
    "startend:end_checker": (
        ["End your answer with the phrase '{phrase}'.", "Finish with '{phrase}'."],
        ["The last words must be '{phrase}'."],
    ),
    "detectable_content:postscript": (
        ["Add a postscript starting with P.S.", "End with a P.S. note."],
        ["Include a P.S. at the end."],
    ),
    "startend:quotation": (
        ["Wrap your whole answer in double quotes.", "Put the answer inside double quotes."],
        ["Your reply should be enclosed in quotation marks."],
    ),
    "detectable_format:json_format": (
        ["Reply in JSON format.", "Format the whole answer as JSON."],
        ["Return a JSON object only."],
    ),
}
END_PHRASES = (["Is there anything else?", "That is all.", "Thank you."], ["Any other questions?"])
KEYWORDS = ("sun water time light green small family morning road friend".split(), "silver echo harbor lantern".split())
