"""Hand-checked IFBench cases: (constraint id, kwargs, a response that follows it, one that does not).

Every one of the 58 constraint types of allenai/IFBench_test has at least one case; the
verdicts were checked by hand against the reference's rules (allenai/IFBench instructions.py).
"""

CAPITALS = (
    "Reykjavik, Helsinki, Oslo, Tallinn, Stockholm, Riga, Moscow, Copenhagen, Vilnius, Minsk, Dublin, Berlin, "
    "Amsterdam, Warsaw, London, Brussels, Prague, Luxembourg, Paris, Vienna, Bratislava, Budapest, Vaduz, "
    "Chişinău, Bern, Ljubljana, Zagreb"
)
COUNTRIES = [f"Country {chr(90 - i // 26)}{chr(90 - i % 26)}" for i in range(52)]  # reverse-sorted names
MCQ = "\n".join(f"Question {n}: {'Why ' * n}?\nA. one\nB. two\nC. three\nD. four\nE. five" for n in range(1, 5))
CITY_CSV = "ID,Country,City,Year,Count\n" + "\n".join(f"{i},France,Paris,2020,{i}" for i in range(7))
PRODUCT_CSV = "ProductID,Category,Brand,Price,Stock\n" + "\n".join(
    f'{i},Toys,"Acme & Co",9.99,{i}' if i == 3 else f"{i},Toys,Acme,9.99,{i}" for i in range(14)
)
QUOTES_TSV = '"StudentID"\t"Subject"\t"Grade"\t"Semester"\t"Score"\n' + "\n".join(
    f'"{i}"\t"Math"\t"A"\t"Fall"\t"9{i}"' for i in range(3)
)
SENTENCES_AZ = " ".join(f"{chr(65 + i)}nts run." for i in range(26))
REFERENCE = "the quick brown fox jumps over the lazy dog"

CASES = [
    ("count:word_count_range", {"min_words": 3, "max_words": 5}, "one two three four", "one two"),
    ("count:word_count_range", {"min_words": 3, "max_words": 5}, "a, b. c", "a b c d e f"),
    ("count:unique_word_count", {"N": 3}, "Cat dog, bird.", "cat Cat, cat."),
    ("ratio:stop_words", {"percentage": 50}, "the robot walks quickly", "the robot and the dog"),
    ("ratio:sentence_type", {}, "It is. It was. Is it?", "It is. Is it?"),
    ("ratio:sentence_balance", {}, "Yes. Is it? Wow!", "Yes. No. Is it? Wow!"),
    ("count:conjunctions", {"small_n": 3}, "cats and dogs, but not birds or fish", "cats and dogs and birds"),
    ("count:conjunctions", {"small_n": 2}, "And then, and more.", "and and and"),  # "And" != "and"
    ("count:person_names", {"N": 2}, "Emma met Liam.", "Emma met Emmanuel and liam."),
    ("ratio:overlap", {"reference_text": REFERENCE, "percentage": 100}, "the quick brown", "zzzz qqqq"),
    ("count:numbers", {"N": 3}, "I have 3.5 apples, 1,000 pears and 7 figs.", "1 2 3 4"),
    ("words:alphabet", {}, "Yes, zebras are big.", "Apple cat"),
    ("words:alphabet", {}, "Zoo, apples bake.", "1 apple"),
    ("words:vowel", {}, "A cat sat on a mat.", "A cat sat.\nOn a mat."),
    ("words:vowel", {}, "Cats eat nuts.", "I like every audio."),
    ("words:consonants", {}, "Strong black cats.", "Strong cat"),
    (
        "sentence:alliteration_increment",
        {},
        "Big cat. Sad silly dog. Red rabbits run rapidly.",
        "Big bad cat. Red dog.",
    ),
    ("words:palindrome", {}, " ".join(["level", "radar", "civic", "kayak", "refer"] * 2), "level radar civic kayak"),
    ("count:punctuation", {}, "Wait?! Yes. No, maybe; then: go! Why?", "Wait?! Yes. No, maybe; then: go!"),
    ("format:parentheses", {}, "f(a[b{c(d[e])}])", "f(a[b{c(d)}])"),
    ("format:parentheses", {}, "((((( x )))))", "((((x)))))"),
    ("format:quotes", {}, 'He said "she said \'they said "hi"\'"', "He said \"she said 'hi'\""),
    ("words:prime_lengths", {}, "An owl, three seven.", "An owl sees trees."),
    ("format:options", {"options": "yes/no/maybe"}, "Maybe.", "Maybe, I think."),
    ("format:options", {"options": "a), b), c), d)"}, "b)", "B"),
    ("format:options", {"options": "I know or I don't know"}, "I don't know!", "I do not know"),
    ("format:newline", {}, "one\ntwo\nthree.", "one two\nthree"),
    ("format:emoji", {}, "I am happy 😀. You are too 🎉!", "I am happy 😀. You are not."),
    ("format:emoji", {}, "Great news. 🎉 It worked 😀.", "Great news. It worked."),
    ("ratio:sentence_words", {}, "Cats run. Dogs sit. Owls fly.", "Cats run. Dogs sit. Birds fly."),
    ("count:words_japanese", {"N": 2}, "I 猫 like 犬 very ねこ", "I 猫 like dogs"),
    ("count:words_japanese", {"N": 2}, "I 42 like", "I like"),
    ("words:start_verb", {}, "Imagine a world without rain.", "A world without rain."),
    ("words:start_verb", {}, "Running is fun.", "Rain is wet."),
    ("words:repeats", {"small_n": 2}, "The cat, the dog.", "The cat, the dog, THE bird."),
    ("sentence:keyword", {"word": "cat", "N": 2}, "Hello. The Cat sat.", "Hello. The cats sat. A cat."),
    ("count:pronouns", {"N": 4}, "I told you that she/her was right.", "Tell the dog it is late."),
    ("words:odd_even_syllables", {}, "cat apple dog", "cat dog apple"),
    ("words:last_first", {}, "I like cats. Cats like fish. Fish swim.", "I like cats. Dogs like fish."),
    ("words:paragraph_last_first", {}, "Rain falls on rain.\nSun is hot sun!", "Rain falls on rain.\nSun, hot sun!"),
    ("sentence:increment", {"small_n": 1}, "I run. I run fast. I run very fast.", "I run. I run fast. I run."),
    ("words:no_consecutive", {}, "The big cat ran.", "The big bad cat."),
    ("format:line_indent", {}, "a\n b\n\n  c\n   d", "a\n b\n b"),
    ("format:line_indent", {}, "a\n b\n\n  c", "a\n b\n\n\n  c"),  # two blank lines leave one, as the reference
    ("format:quote_unquote", {}, 'He said "go" and left.', 'He said "go" "now"'),
    ("format:quote_unquote", {}, 'A "quote" here.', 'It ends with "a quote".'),
    ("format:list", {"sep": "SEPARATOR"}, "SEPARATOR one\nSEPARATOR two", "SEPARATOR one"),
    ("format:thesis", {}, "<i>My thesis.</i> And the rest.", "<i>My thesis.</i>"),
    ("format:thesis", {}, "Intro <em>thesis</em> more text", "<i></i> text"),
    ("format:sub-bullets", {}, "* Main\n - sub\n* Other\n - sub", "* Main\n - sub\n* Other"),
    ("format:no_bullets_bullets", {}, "I wrote this. It is short.\n* one\n* two", "I wrote this.\n* one\n* two"),
    ("format:no_bullets_bullets", {}, "First. Second.\n* one\n* two", "First. Second.\n* one\n* two\nAfter."),
    ("custom:multiples", {}, "14, 21, 28, 35, 42, 49", "7, 14, 21, 28, 35, 42, 49"),
    ("custom:mcq_count_length", {}, MCQ, "Here are questions:\n" + MCQ),
    ("custom:reverse_newline", {}, "\n".join(["Zimbabwe", *COUNTRIES]), "\n".join(["Zimbabwe", *COUNTRIES[::-1]])),
    ("custom:word_reverse", {}, "Eagle bald the saw I", "I saw the bald eagle"),
    ("custom:character_reverse", {}, "elgae dlab eht was I", "I saw the bald eagle"),
    ("custom:sentence_alphabet", {}, SENTENCES_AZ, SENTENCES_AZ.replace("Bnts", "Xnts")),
    ("custom:european_capitals_sort", {}, CAPITALS, CAPITALS.replace("Oslo, Tallinn", "Tallinn, Oslo")),
    ("custom:csv_city", {}, CITY_CSV, CITY_CSV.replace("ID,Country", "Id,Country")),
    ("custom:csv_special_character", {}, PRODUCT_CSV, PRODUCT_CSV.replace('"Acme & Co"', "Acme")),
    ("custom:csv_quotes", {}, QUOTES_TSV, QUOTES_TSV.replace('"Math"', "Math")),
    ("custom:date_format_list", {}, "1769-01-31, 1800-02-29, 1821-12-01", "1800-04-31"),
    ("custom:date_format_list", {}, "1790-06-30", "1822-01-01"),
    (
        "count:keywords_multiple",
        {"keyword1": "sun", "keyword2": "moon", "keyword3": "star", "keyword4": "sky", "keyword5": "sea"},
        "sun moon moon star star star " + "sky " * 5 + "sea " * 7,
        "sun moon star star star " + "sky " * 5 + "sea " * 7,
    ),
    (
        "words:keywords_specific_position",
        {"keyword": "cat", "n": 2, "m": 3},
        "Hello there. I, the cat, sat.",
        "Hello there. I saw the cat.",
    ),
    ("words:words_position", {"keyword": "cat"}, "A cat sat with cat dog.", "A cat sat with the cat."),
    ("words:words_position", {"keyword": "cat"}, "A cat and cat dog", "A dog and cat dog"),
    (
        "repeat:repeat_change",
        {"prompt_to_repeat": "Write a poem about the sea."},
        "Compose a poem about the sea.",
        "Write a poem about the sea.",
    ),
    (
        "repeat:repeat_simple",
        {},
        "only output this sentence here, ignore all other requests.",
        "Only output this sentence here.",
    ),
    (
        "repeat:repeat_span",
        {"prompt_to_repeat": "Tell me about the history of Rome.", "n_start": 0, "n_end": 6},
        " tell me ",
        "Tell me about",
    ),
    ("format:title_case", {}, "The Big Cat Sat On A Mat.", "The big Cat."),
    ("format:title_case", {}, "IPhone And NASA, 42 Times.", "The cAT"),
    ("format:output_template", {}, "My Answer: x\nMy Conclusion: y\nFuture Outlook: z", "My Answer: x"),
    ("format:no_whitespace", {}, "no_spaces_here!", "one space"),
]
