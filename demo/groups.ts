/**
 * The demo corpus's document groups: each a style of its own (a merchant house's ledger, a ship's
 * log) with its own header, fact sentences, questions and filler, over closed lists of values.
 *
 * Templates are written as tokens separated by single spaces, punctuation included (`item , {e}
 * bought {v} .`): `{e}` is the entity, `{v}` the value, any other `{slot}` a word (or span) drawn
 * from {@link SLOT_VALUES}. Every word is lower case, so the tokenizer needs no case handling.
 *
 * @module
 */

/** One attribute a fact can state about an entity: its values, how a fact says it, how it is asked. */
export interface DemoAttribute {
  /** Name of the attribute ("goods"). */
  readonly name: string;
  /** The values it takes; a value is one word or a span of words separated by spaces. */
  readonly values: readonly string[];
  /** Sentences stating the fact, each with one `{e}` and one `{v}`. */
  readonly facts: readonly string[];
  /** The question asking it, with one `{e}`. */
  readonly question: string;
}

/** A document group: a style of its own, with its own attributes. */
export interface DemoGroup {
  /** Name of the group; documents are written as `<name>-<n>.txt`. */
  readonly name: string;
  /** The first sentence of every document (filler slots only). */
  readonly header: string;
  readonly attributes: readonly DemoAttribute[];
  /** Sentences that state no fact: no entity, filler slots only. */
  readonly filler: readonly string[];
}

const ONES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
const TEENS = [
  "ten",
  "eleven",
  "twelve",
  "thirteen",
  "fourteen",
  "fifteen",
  "sixteen",
  "seventeen",
  "eighteen",
  "nineteen",
];
const TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];

/**
 * `n` (1..99) in words: "seven", "fourteen", "forty two".
 *
 * @example
 * ```ts
 * import { numberWords } from "./groups.ts";
 * console.log(numberWords(42)); // "forty two"
 * ```
 */
export function numberWords(n: number): string {
  if (!Number.isInteger(n) || n < 1 || n > 99) throw new RangeError(`Cannot spell ${n}: not in 1..99`);
  if (n < 10) return ONES[n - 1];
  if (n < 20) return TEENS[n - 10];
  const tens = TENS[Math.floor(n / 10) - 2];
  return n % 10 === 0 ? tens : `${tens} ${ONES[(n % 10) - 1]}`;
}

/** 2..99 in words: counts and sums (one or two words). */
export const NUMBERS: readonly string[] = Array.from({ length: 98 }, (_, i) => numberWords(i + 2));

const GOODS = [
  "silk",
  "salt",
  "pepper",
  "copper",
  "tin",
  "wool",
  "linen",
  "amber",
  "ivory",
  "cinnamon",
  "saffron",
  "indigo",
  "timber",
  "tar",
  "wax",
  "honey",
  "wine",
  "barley",
  "iron",
  "glass",
];
const TOWNS = [
  "ashby",
  "brackwell",
  "coldharbor",
  "dunmere",
  "elmstead",
  "fernholt",
  "greywick",
  "hallowmere",
  "ironbridge",
  "kettleby",
  "lowmarsh",
  "millbrook",
  "northam",
  "oakhurst",
  "redbank",
  "stonehaven",
];
const TRADES = [
  "weaver",
  "smith",
  "tanner",
  "cooper",
  "mason",
  "baker",
  "potter",
  "dyer",
  "chandler",
  "fletcher",
  "glazier",
  "brewer",
  "saddler",
  "joiner",
  "miller",
  "thatcher",
];
const PORTS = [
  "calder",
  "brisa",
  "tolmare",
  "varesh",
  "quillon",
  "hadra",
  "serrin",
  "oskel",
  "maravel",
  "tiberne",
  "kesh",
  "lunmar",
  "dorvale",
  "estrin",
  "palomar",
  "zarhaven",
];
const ROLES = [
  "pilot",
  "bosun",
  "gunner",
  "carpenter",
  "surgeon",
  "navigator",
  "lookout",
  "purser",
  "helmsman",
  "cook",
  "quartermaster",
  "sailmaker",
  "rigger",
  "drummer",
];
const COLOURS = [
  "red",
  "blue",
  "green",
  "black",
  "white",
  "grey",
  "yellow",
  "violet",
  "brown",
  "scarlet",
  "ochre",
  "crimson",
];
const BEASTS = [
  "lion",
  "stag",
  "boar",
  "wolf",
  "bear",
  "hound",
  "ram",
  "bull",
  "fox",
  "hare",
  "otter",
  "serpent",
];
const SHIP_WORDS = [
  "swift",
  "bold",
  "quiet",
  "lucky",
  "proud",
  "gallant",
  "wild",
  "silver",
  "golden",
  "restless",
];
const BIRDS = [
  "heron",
  "gull",
  "petrel",
  "falcon",
  "swan",
  "raven",
  "osprey",
  "cormorant",
  "kestrel",
  "albatross",
];

const pairs = (a: readonly string[], b: readonly string[]) => a.flatMap((x) => b.map((y) => `${x} ${y}`));
/** Seals: a colour and a beast ("red lion"), two-word answers. */
const SEALS = pairs(COLOURS, BEASTS);
/** Ship names: an adjective and a bird ("swift heron"), two-word answers. */
const SHIPS = pairs(SHIP_WORDS, BIRDS);

/**
 * The words filler `{slot}`s draw from: none of them is the value of any fact, so a fact's value is
 * the only word of its kind in a document (a filler sentence never names goods, a town or a number a
 * question could ask about), and a compressor learns which words to keep from the words themselves.
 */
export const SLOT_VALUES: Readonly<Record<string, readonly string[]>> = {
  wares: ["rope", "nails", "flour", "oil", "cloth", "lead", "hides", "coal"],
  place: ["coast", "hills", "capital", "river towns", "marshes", "uplands"],
  count: ["several", "sundry", "some", "countless", "numerous"],
  visitor: ["stranger", "pedlar", "traveller", "drover", "pilgrim"],
  shade: ["pale", "dark", "faded", "bright", "dull"],
  vessel: ["royal barge", "hired galley", "tarred cog", "long hulk", "fishing smack"],
  landmark: ["cape", "islands", "headland", "lighthouse", "sandbar", "shoals"],
};

/** A merchant house's account book. */
const LEDGER: DemoGroup = {
  name: "ledger",
  header: "here begins the ledger of the {shade} house .",
  attributes: [
    {
      name: "goods",
      values: GOODS,
      facts: [
        "item , {e} bought {v} from the house and paid in coin .",
        "{e} took {v} from the storehouse on credit this day .",
      ],
      question: "what goods did {e} buy from the house ?",
    },
    {
      name: "debt",
      values: NUMBERS,
      facts: [
        "the account of {e} shows a debt of {v} crowns .",
        "{e} owes the house {v} crowns , due at midsummer .",
      ],
      question: "how many crowns does {e} owe the house ?",
    },
    {
      name: "town",
      values: TOWNS,
      facts: [
        "{e} keeps a shop in the town of {v} .",
        "letters for {e} are sent to {v} , where the shop stands .",
      ],
      question: "in which town does {e} keep a shop ?",
    },
    {
      name: "trade",
      values: TRADES,
      facts: [
        "{e} is a {v} by trade and a member of the guild .",
        "the guild lists {e} as a {v} of good standing .",
      ],
      question: "what is the trade of {e} ?",
    },
    {
      name: "seal",
      values: SEALS,
      facts: [
        "{e} signs every bill with the seal of the {v} .",
        "the bills of {e} carry the seal of the {v} .",
      ],
      question: "what seal does {e} sign with ?",
    },
  ],
  filler: [
    "the clerk counted the coin twice before the strongbox was locked .",
    "the price of {wares} rose by {count} pence at the market .",
    "a cart of {wares} arrived from the {place} late in the evening .",
    "the scales were checked and found honest .",
    "rain kept the buyers away from the market hall .",
    "a letter went to the {place} about the cost of {wares} .",
    "{count} bales were stored in the cellar .",
    "the guild met and spoke of taxes .",
    "no payment was entered this day .",
    "the ink ran low and more was bought .",
    "the house closed early for the feast .",
    "a {visitor} from the {place} asked about prices but bought nothing .",
    "the lamps in the counting room were trimmed .",
    "the old debts were read aloud to the partners .",
    "the sealing ink was {shade} this month .",
    "all accounts were balanced by nightfall .",
    "the porters carried {wares} up from the yard .",
    "coin from the {place} was weighed and stored .",
    "the clerk made a fair copy of the book .",
    "trade was slow and the street was empty .",
    "a merchant of the {place} sent greetings .",
    "prices stayed steady .",
  ],
};

/** A ship's log. */
const VOYAGE: DemoGroup = {
  name: "voyage",
  header: "log of the {vessel} , written by the mate .",
  attributes: [
    {
      name: "port",
      values: PORTS,
      facts: [
        "{e} stepped ashore at {v} with the morning tide .",
        "we set {e} down on the quay at {v} .",
      ],
      question: "at which port did {e} go ashore ?",
    },
    {
      name: "ship",
      values: SHIPS,
      facts: [
        "{e} came aboard from the {v} in heavy seas .",
        "{e} was rowed across to us from the {v} .",
      ],
      question: "from which ship did {e} come aboard ?",
    },
    {
      name: "watch",
      values: NUMBERS,
      facts: [
        "{e} commands a watch of {v} sailors .",
        "{v} sailors stand the watch under {e} .",
      ],
      question: "how many sailors stand the watch under {e} ?",
    },
    {
      name: "post",
      values: ROLES,
      facts: [
        "{e} signed on as {v} for this voyage .",
        "the captain named {e} our {v} after the storm .",
      ],
      question: "what post does {e} hold aboard ?",
    },
    {
      name: "pennant",
      values: COLOURS,
      facts: [
        "{e} flies a {v} pennant from the mast .",
        "the pennant of {e} is {v} and easy to see .",
      ],
      question: "what colour is the pennant of {e} ?",
    },
  ],
  filler: [
    "the wind backed to the north and the sea grew rough .",
    "we sighted the {landmark} off the bow at dawn .",
    "the deck was scrubbed and the ropes coiled .",
    "fog lay on the water until noon .",
    "we loaded fresh water and {count} barrels of fish .",
    "a {shade} sail passed us to the south .",
    "the weather turned and we shortened sail .",
    "gulls followed the wake all afternoon .",
    "we logged {count} leagues since the last reckoning .",
    "the {vessel} was seen far astern .",
    "the crew sang as they hauled the anchor .",
    "stars were clear and the course held .",
    "a squall struck at midnight but did no harm .",
    "we passed the {landmark} without stopping .",
    "the hull was sound and the pumps were idle .",
    "dolphins played under the bow .",
    "the night watch reported calm seas .",
    "the sun was hot and the pitch soft in the seams .",
    "we tacked hard to clear the reef .",
    "the boats were lashed down before the swell .",
    "no land in sight .",
    "the mate studied the charts of the {landmark} .",
  ],
};

/** Every group, by name, in the order `--groups` lists them by default. */
export const DEMO_GROUPS: readonly DemoGroup[] = [LEDGER, VOYAGE];

/**
 * Words both groups may use: articles, prepositions, pronouns, auxiliaries, question words and
 * punctuation. Any other template word belongs to one group only (the styles differ in every
 * content word).
 */
export const SHARED_WORDS: ReadonlySet<string> = new Set([
  ".",
  ",",
  "?",
  "a",
  "all",
  "and",
  "are",
  "as",
  "at",
  "before",
  "but",
  "by",
  "did",
  "does",
  "for",
  "from",
  "how",
  "in",
  "is",
  "many",
  "no",
  "of",
  "on",
  "our",
  "the",
  "this",
  "to",
  "until",
  "us",
  "was",
  "we",
  "were",
  "what",
  "which",
  "with",
  "where",
  "up",
]);

/**
 * The words of a template, its slots (`{v}`, `{goods}`) left out.
 *
 * @example
 * ```ts
 * import { templateWords } from "./groups.ts";
 * console.log(templateWords("{e} owes {v} crowns .")); // ["owes", "crowns", "."]
 * ```
 */
export function templateWords(template: string): string[] {
  return template.split(" ").filter((w) => !w.startsWith("{"));
}

/**
 * Every template of a group: header, fact sentences, questions and filler.
 *
 * @example
 * ```ts
 * import { DEMO_GROUPS, groupTemplates } from "./groups.ts";
 * console.log(groupTemplates(DEMO_GROUPS[0])[0]); // the ledger's header
 * ```
 */
export function groupTemplates(group: DemoGroup): string[] {
  return [
    group.header,
    ...group.attributes.flatMap((a) => [...a.facts, a.question]),
    ...group.filler,
  ];
}
