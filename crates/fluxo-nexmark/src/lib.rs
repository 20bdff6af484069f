//! Deterministic generator of the [Nexmark] benchmark's event stream: an
//! online auction site where people register, open auctions and bid on them.
//!
//! The stream interleaves three event kinds in the benchmark's fixed
//! proportions — out of every 50 events, 1 [`Person`], 3 [`Auction`]s and 46
//! [`Bid`]s — and follows the reference generator's rules (Apache Beam /
//! Flink `GeneratorConfig`): ids start at 1000 and are consecutive, bids and
//! auctions refer to recently created people and auctions with a few "hot"
//! ones receiving most of the traffic, prices are log-uniform, and every
//! event is padded with an `extra` string towards the configured average
//! size. Event `n` happens at `base_time_ms + n * 1000 / events_per_second`.
//!
//! Every event is a pure function of `(config, event number)`: its random
//! choices come from a small PRNG seeded by hashing the seed with the event
//! number. The same seed therefore always yields the same stream, and a
//! stream can be resumed anywhere or split between several generators
//! ([`Generator::skip_to`]) without replaying what came before.
//!
//! Events serialize to flat JSON objects ([`Event::write_json`]) without any
//! serialization framework, because this sits on a benchmark's hot path.
//!
//! [Nexmark]: https://github.com/nexmark/nexmark

#![forbid(unsafe_code)]

/// Id of the first person; person ids are consecutive from here.
pub const FIRST_PERSON_ID: i64 = 1000;
/// Id of the first auction; auction ids are consecutive from here.
pub const FIRST_AUCTION_ID: i64 = 1000;
/// Smallest auction category.
pub const FIRST_CATEGORY_ID: i64 = 10;
/// Categories are `FIRST_CATEGORY_ID..FIRST_CATEGORY_ID + NUM_CATEGORIES`;
/// few of them, so category queries find matches even on small streams.
pub const NUM_CATEGORIES: i64 = 5;
/// A bid or auction may name a person up to this many ids beyond the last
/// person generated so far (the spec lets "future" people appear early).
pub const PERSON_ID_LEAD: i64 = 10;
/// A bid may name an auction up to this many ids beyond the last auction
/// generated so far.
pub const AUCTION_ID_LEAD: i64 = 10;

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const BID_PROPORTION: u64 = 46;
const TOTAL_PROPORTION: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;

// Hot auctions, bidders and sellers are the first (for bidders: second) id of
// each batch of this many ids (the spec's HOT_*_RATIO = 100 constants).
const HOT_AUCTION_BATCH: u64 = 100;
const HOT_BIDDER_BATCH: u64 = 100;
const HOT_SELLER_BATCH: u64 = 100;

/// One bid in this many goes to a non-hot channel.
const HOT_CHANNELS_RATIO: u64 = 2;
const CHANNELS_NUMBER: u64 = 10_000;
const HOT_CHANNEL_COUNT: usize = 4;
const HOT_CHANNELS: [&str; HOT_CHANNEL_COUNT] = ["Google", "Facebook", "Baidu", "Apple"];

const MIN_STRING_LENGTH: u64 = 3;
const URL_SEGMENT_MAX_LENGTH: u64 = 5;
const ITEM_NAME_MAX_LENGTH: u64 = 20;
const DESCRIPTION_MAX_LENGTH: u64 = 100;

// The spec counts every number and timestamp as 8 bytes when deciding how
// much `extra` padding an event needs.
const NUMERIC_FIELD_BYTES: usize = 8;
const BID_FIXED_BYTES: usize = 4 * NUMERIC_FIELD_BYTES;

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

// Separate hash domains so that event, channel and hot-URL randomness never
// share a PRNG stream for the same seed.
const EVENT_DOMAIN: u64 = 0x6E65_786D_6172_6B01;
const CHANNEL_DOMAIN: u64 = 0x6E65_786D_6172_6B02;
const HOT_URL_DOMAIN: u64 = 0x6E65_786D_6172_6B03;

const MS_PER_DAY: i64 = 86_400_000;

/// Parameters of a generated stream; see [`GeneratorConfig::default`] for the
/// benchmark's standard values.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub seed: u64,
    /// Event time of event 0, milliseconds since the Unix epoch.
    pub base_time_ms: i64,
    /// Event-time rate: event n has time `base_time_ms + n * 1000 / events_per_second`
    /// (exact integer arithmetic, rounded down to whole milliseconds). 0 is treated as 1.
    pub events_per_second: u64,
    /// How many of the most recent people bids and auctions pick from.
    pub num_active_people: u64,
    /// How many of the most recent auctions bids pick from.
    pub num_in_flight_auctions: u64,
    /// One bid in this many picks a random auction; the others go to a hot one.
    pub hot_auction_ratio: u64,
    /// One bid in this many comes from a random person; the others from a hot bidder.
    pub hot_bidders_ratio: u64,
    /// One auction in this many has a random seller; the others a hot seller.
    pub hot_sellers_ratio: u64,
    pub avg_person_bytes: usize,
    pub avg_auction_bytes: usize,
    pub avg_bid_bytes: usize,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 0,
            base_time_ms: 1_700_000_000_000,
            events_per_second: 10_000,
            num_active_people: 1000,
            num_in_flight_auctions: 100,
            hot_auction_ratio: 2,
            hot_bidders_ratio: 4,
            hot_sellers_ratio: 4,
            avg_person_bytes: 200,
            avg_auction_bytes: 500,
            avg_bid_bytes: 100,
        }
    }
}

/// A new user of the auction site. `date_time` is epoch milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub id: i64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    pub date_time: i64,
    pub extra: String,
}

/// A new auction. `date_time` and `expires` are epoch milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Auction {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: i64,
    pub reserve: i64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    pub extra: String,
}

/// A bid on an auction. `date_time` is epoch milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Bid {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub channel: String,
    pub url: String,
    pub date_time: i64,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Person,
    Auction,
    Bid,
}

/// Produces the Nexmark stream event by event, starting at any event number.
#[derive(Debug, Clone)]
pub struct Generator {
    config: GeneratorConfig,
    next_event_number: u64,
    event_key: u64,
    channel_key: u64,
    hot_urls: [String; HOT_CHANNEL_COUNT],
}

impl Generator {
    pub fn new(config: GeneratorConfig) -> Generator {
        let hot_url_key = domain_key(config.seed, HOT_URL_DOMAIN);
        let hot_urls = std::array::from_fn(|index| {
            random_base_url(&mut SplitMix64::for_stream(hot_url_key, index as u64))
        });
        Generator {
            event_key: domain_key(config.seed, EVENT_DOMAIN),
            channel_key: domain_key(config.seed, CHANNEL_DOMAIN),
            hot_urls,
            config,
            next_event_number: 0,
        }
    }

    /// Continues the stream at event number `n`. Generator k of m can split one
    /// stream by visiting k, k+m, k+2m, ...; each event is identical to the one
    /// a generator started at 0 would produce.
    pub fn skip_to(&mut self, n: u64) {
        self.next_event_number = n;
    }

    /// Number of the event the next call to [`Generator::next_event`] produces.
    pub fn event_number(&self) -> u64 {
        self.next_event_number
    }

    pub fn next_event(&mut self) -> Event {
        let n = self.next_event_number;
        self.next_event_number = n.wrapping_add(1);
        match Self::kind_of(n) {
            EventKind::Person => Event::Person(self.person_at(n)),
            EventKind::Auction => Event::Auction(self.auction_at(n)),
            EventKind::Bid => Event::Bid(self.bid_at(n)),
        }
    }

    /// Skips persons and auctions up to the next bid, returns it and moves past it.
    pub fn next_bid(&mut self) -> Bid {
        let mut n = self.next_event_number;
        // Every block of 50 events ends in 46 bids, so this stops within a few steps.
        while Self::kind_of(n) != EventKind::Bid {
            n = n.wrapping_add(1);
        }
        self.next_event_number = n.wrapping_add(1);
        self.bid_at(n)
    }

    /// The event number of the `k`-th event (from 0) of one kind, so that a
    /// stream of only bids (say) can resume at its `k`-th bid.
    pub fn event_number_of(kind: EventKind, k: u64) -> u64 {
        let (first, per_block) = match kind {
            EventKind::Person => (0, PERSON_PROPORTION),
            EventKind::Auction => (PERSON_PROPORTION, AUCTION_PROPORTION),
            EventKind::Bid => (
                PERSON_PROPORTION + AUCTION_PROPORTION,
                TOTAL_PROPORTION - PERSON_PROPORTION - AUCTION_PROPORTION,
            ),
        };
        (k / per_block) * TOTAL_PROPORTION + first + k % per_block
    }

    /// Kind of event number `n`: each block of 50 is 1 person, 3 auctions, 46 bids.
    pub fn kind_of(n: u64) -> EventKind {
        let offset = n % TOTAL_PROPORTION;
        if offset < PERSON_PROPORTION {
            EventKind::Person
        } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
            EventKind::Auction
        } else {
            EventKind::Bid
        }
    }

    fn event_rng(&self, n: u64) -> SplitMix64 {
        SplitMix64::for_stream(self.event_key, n)
    }

    fn timestamp_for_event(&self, n: u64) -> i64 {
        let events_per_second = u128::from(self.config.events_per_second.max(1));
        let offset_ms = u128::from(n) * 1000 / events_per_second;
        let offset_ms = i64::try_from(offset_ms).unwrap_or(i64::MAX);
        self.config.base_time_ms.saturating_add(offset_ms)
    }

    fn person_at(&self, n: u64) -> Person {
        let mut rng = self.event_rng(n);
        let name = person_name(&mut rng);
        let email_address = email_address(&mut rng);
        let credit_card = credit_card(&mut rng);
        let city = pick(&mut rng, &US_CITIES).to_owned();
        let state = pick(&mut rng, &US_STATES).to_owned();
        let fixed_bytes = NUMERIC_FIELD_BYTES
            + name.len()
            + email_address.len()
            + credit_card.len()
            + city.len()
            + state.len();
        let extra = next_extra(&mut rng, fixed_bytes, self.config.avg_person_bytes);
        Person {
            id: FIRST_PERSON_ID + last_base0_person_id(n) as i64,
            name,
            email_address,
            credit_card,
            city,
            state,
            date_time: self.timestamp_for_event(n),
            extra,
        }
    }

    fn auction_at(&self, n: u64) -> Auction {
        let mut rng = self.event_rng(n);
        let date_time = self.timestamp_for_event(n);
        let seller_base0 = if rng.below(self.config.hot_sellers_ratio) > 0 {
            last_base0_person_id(n) / HOT_SELLER_BATCH * HOT_SELLER_BATCH
        } else {
            self.next_base0_person_id(n, &mut rng)
        };
        let category = FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES as u64) as i64;
        let initial_bid = next_price(&mut rng);
        let expires = date_time.saturating_add(self.next_auction_length_ms(n, date_time, &mut rng));
        let item_name = random_text(&mut rng, ITEM_NAME_MAX_LENGTH, ' ');
        let description = random_text(&mut rng, DESCRIPTION_MAX_LENGTH, ' ');
        let reserve = initial_bid.saturating_add(next_price(&mut rng));
        let fixed_bytes = item_name.len() + description.len() + 6 * NUMERIC_FIELD_BYTES;
        let extra = next_extra(&mut rng, fixed_bytes, self.config.avg_auction_bytes);
        Auction {
            id: FIRST_AUCTION_ID + last_base0_auction_id(n) as i64,
            item_name,
            description,
            initial_bid,
            reserve,
            date_time,
            expires,
            seller: FIRST_PERSON_ID + seller_base0 as i64,
            category,
            extra,
        }
    }

    fn bid_at(&self, n: u64) -> Bid {
        let mut rng = self.event_rng(n);
        let auction_base0 = if rng.below(self.config.hot_auction_ratio) > 0 {
            last_base0_auction_id(n) / HOT_AUCTION_BATCH * HOT_AUCTION_BATCH
        } else {
            self.next_base0_auction_id(n, &mut rng)
        };
        let bidder_base0 = if rng.below(self.config.hot_bidders_ratio) > 0 {
            // The second person of the batch, so hot bidders never coincide with hot sellers.
            last_base0_person_id(n) / HOT_BIDDER_BATCH * HOT_BIDDER_BATCH + 1
        } else {
            self.next_base0_person_id(n, &mut rng)
        };
        let price = next_price(&mut rng);
        let (channel, url) = if rng.below(HOT_CHANNELS_RATIO) > 0 {
            let index = rng.below(HOT_CHANNEL_COUNT as u64) as usize;
            let channel = HOT_CHANNELS.get(index).copied().unwrap_or_default();
            let url = self.hot_urls.get(index).cloned().unwrap_or_default();
            (channel.to_owned(), url)
        } else {
            let channel_number = rng.below(CHANNELS_NUMBER);
            let mut channel = String::with_capacity(16);
            channel.push_str("channel-");
            push_padded_decimal(&mut channel, channel_number, 1);
            (channel, self.channel_url(channel_number))
        };
        let extra = next_extra(&mut rng, BID_FIXED_BYTES, self.config.avg_bid_bytes);
        Bid {
            auction: FIRST_AUCTION_ID + auction_base0 as i64,
            bidder: FIRST_PERSON_ID + bidder_base0 as i64,
            price,
            channel,
            url,
            date_time: self.timestamp_for_event(n),
            extra,
        }
    }

    /// A random recent person: one of the last `num_active_people`, or up to
    /// PERSON_ID_LEAD not yet created (so person and auction/bid events appear
    /// to be slightly reordered, as in the spec).
    fn next_base0_person_id(&self, n: u64, rng: &mut SplitMix64) -> u64 {
        let num_people = last_base0_person_id(n) + 1;
        let active_people = num_people.min(self.config.num_active_people);
        let offset = rng.below(active_people.saturating_add(PERSON_ID_LEAD as u64));
        num_people - active_people + offset
    }

    /// A random auction among the last `num_in_flight_auctions`, or up to
    /// AUCTION_ID_LEAD not yet created; the spec approximates "still open"
    /// this way because exact tracking would not split across generators.
    fn next_base0_auction_id(&self, n: u64, rng: &mut SplitMix64) -> u64 {
        let max_auction = last_base0_auction_id(n);
        let min_auction = max_auction.saturating_sub(self.config.num_in_flight_auctions);
        let span = (max_auction - min_auction + 1).saturating_add(AUCTION_ID_LEAD as u64);
        min_auction + rng.below(span)
    }

    /// Auctions last on average until `num_in_flight_auctions` more auctions
    /// have been created, so about that many are open at any time.
    fn next_auction_length_ms(&self, n: u64, date_time: i64, rng: &mut SplitMix64) -> i64 {
        let events_until_horizon = self
            .config
            .num_in_flight_auctions
            .saturating_mul(TOTAL_PROPORTION)
            / AUCTION_PROPORTION;
        let horizon_ms = self
            .timestamp_for_event(n.saturating_add(events_until_horizon))
            .saturating_sub(date_time);
        let span = horizon_ms.saturating_mul(2).max(1) as u64;
        1 + rng.below(span) as i64
    }

    /// Non-hot channels keep the same URL wherever they appear, so it is derived
    /// from the channel number alone.
    fn channel_url(&self, channel_number: u64) -> String {
        let mut rng = SplitMix64::for_stream(self.channel_key, channel_number);
        let mut url = random_base_url(&mut rng);
        // As in the spec, 9 in 10 channels carry their (bit-reversed) number in the URL.
        if rng.below(10) > 0 {
            let channel_id = ((channel_number as u32).reverse_bits() as i32).unsigned_abs();
            url.push_str("&channel_id=");
            push_padded_decimal(&mut url, u64::from(channel_id), 1);
        }
        url
    }
}

/// Id (from 0) of the last person created at or before event `n`.
fn last_base0_person_id(n: u64) -> u64 {
    let epoch = n / TOTAL_PROPORTION;
    let offset = (n % TOTAL_PROPORTION).min(PERSON_PROPORTION - 1);
    epoch * PERSON_PROPORTION + offset
}

/// Id (from 0) of the last auction created at or before event `n`. Only
/// meaningful once an auction exists, i.e. for auction and bid events.
fn last_base0_auction_id(n: u64) -> u64 {
    let epoch = n / TOTAL_PROPORTION;
    let offset = n % TOTAL_PROPORTION;
    if offset < PERSON_PROPORTION {
        // The last auction is the final one of the previous block.
        (epoch * AUCTION_PROPORTION).saturating_sub(1)
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
    } else {
        epoch * AUCTION_PROPORTION + (offset - PERSON_PROPORTION)
    }
}

/// Log-uniform between 1.00 and 1,000,000.00 (in cents), as in the spec.
fn next_price(rng: &mut SplitMix64) -> i64 {
    (10.0_f64.powf(rng.unit_f64() * 6.0) * 100.0).round() as i64
}

fn pick<'a>(rng: &mut SplitMix64, choices: &[&'a str]) -> &'a str {
    let index = rng.below(choices.len() as u64) as usize;
    choices.get(index).copied().unwrap_or_default()
}

fn person_name(rng: &mut SplitMix64) -> String {
    let first = pick(rng, &FIRST_NAMES);
    let last = pick(rng, &LAST_NAMES);
    let mut name = String::with_capacity(first.len() + 1 + last.len());
    name.push_str(first);
    name.push(' ');
    name.push_str(last);
    name
}

fn email_address(rng: &mut SplitMix64) -> String {
    let mut email = String::with_capacity(16);
    push_random_text(&mut email, rng, 7, ' ');
    email.push('@');
    push_random_text(&mut email, rng, 5, ' ');
    email.push_str(".com");
    email
}

/// Four space-separated groups of four digits.
fn credit_card(rng: &mut SplitMix64) -> String {
    let mut card = String::with_capacity(19);
    for group in 0..4 {
        if group > 0 {
            card.push(' ');
        }
        push_padded_decimal(&mut card, rng.below(10_000), 4);
    }
    card
}

fn random_base_url(rng: &mut SplitMix64) -> String {
    let mut url = String::with_capacity(96);
    url.push_str("https://www.nexmark.com/");
    for _ in 0..3 {
        push_random_text(&mut url, rng, URL_SEGMENT_MAX_LENGTH, '_');
        url.push('/');
    }
    url.push_str("item.htm?query=1");
    url
}

fn random_text(rng: &mut SplitMix64, max_len: u64, filler: char) -> String {
    let mut text = String::with_capacity(max_len as usize);
    push_random_text(&mut text, rng, max_len, filler);
    text
}

/// Appends 3..max_len-1 lowercase letters with roughly one in 13 replaced by
/// `filler`; space-filled text is trimmed, as the spec's strings are.
fn push_random_text(out: &mut String, rng: &mut SplitMix64, max_len: u64, filler: char) {
    let len = MIN_STRING_LENGTH + rng.below(max_len.saturating_sub(MIN_STRING_LENGTH));
    let start = out.len();
    for _ in 0..len {
        let draw = rng.next_u64();
        if draw % 13 == 0 {
            out.push(filler);
        } else {
            out.push(char::from(b'a' + ((draw >> 32) % 26) as u8));
        }
    }
    if filler == ' ' {
        let trimmed_len = out.trim_end_matches(' ').len().max(start);
        out.truncate(trimmed_len);
        let leading_blanks = out.as_bytes().get(start..).map_or(0, |text| {
            text.iter().take_while(|&&byte| byte == b' ').count()
        });
        if leading_blanks > 0 {
            out.replace_range(start..start + leading_blanks, "");
        }
    }
}

/// Padding that brings an event whose other fields take `fixed_bytes` to
/// `desired_average` bytes on average (uniform within ±20%, as in the spec).
fn next_extra(rng: &mut SplitMix64, fixed_bytes: usize, desired_average: usize) -> String {
    if fixed_bytes > desired_average {
        return String::new();
    }
    let remaining = desired_average - fixed_bytes;
    // round(remaining * 0.2) in integers; a fifth never ends in exactly .5.
    let delta = remaining.saturating_add(2) / 5;
    let min_len = remaining - delta;
    let len = if delta == 0 {
        min_len
    } else {
        min_len + rng.below(2 * delta as u64) as usize
    };
    letter_padding(rng, len)
}

const LETTER_POOL_LEN: usize = 4096;
const LETTER_POOL_BYTES: [u8; LETTER_POOL_LEN] = build_letter_pool();
// Padding is a slice of this fixed random text: copying is far cheaper than
// drawing a random number per letter, and the content carries no meaning.
const LETTER_POOL: &str = match std::str::from_utf8(&LETTER_POOL_BYTES) {
    Ok(letters) => letters,
    Err(_) => "",
};

const fn build_letter_pool() -> [u8; LETTER_POOL_LEN] {
    let mut pool = [b'a'; LETTER_POOL_LEN];
    let mut state: u64 = 0x853C_49E6_748F_EA9B;
    let mut index = 0;
    while index < LETTER_POOL_LEN {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        pool[index] = b'a' + ((state >> 32) % 26) as u8;
        index += 1;
    }
    pool
}

fn letter_padding(rng: &mut SplitMix64, len: usize) -> String {
    let mut padding = String::with_capacity(len);
    let mut start = rng.below(LETTER_POOL_LEN as u64) as usize;
    while padding.len() < len {
        let take = (len - padding.len()).min(LETTER_POOL_LEN - start);
        match LETTER_POOL.get(start..start + take) {
            Some(chunk) if !chunk.is_empty() => padding.push_str(chunk),
            _ => break,
        }
        start = 0;
    }
    padding
}

/// SplitMix64: tiny, fast, and good enough statistically for synthetic data;
/// seeded per event so events can be generated in any order.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn domain_key(seed: u64, domain: u64) -> u64 {
    mix64(mix64(seed) ^ domain)
}

impl SplitMix64 {
    fn for_stream(key: u64, index: u64) -> SplitMix64 {
        SplitMix64 {
            state: mix64(key ^ mix64(index.wrapping_mul(GOLDEN_GAMMA))),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in `0..bound` (Lemire's multiply-shift; the bias is far below
    /// anything the benchmark could notice). Returns 0 when `bound` is 0.
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

impl Person {
    /// Appends this person as one flat JSON object (no trailing newline).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        write_int_field(out, b"{\"id\":", self.id);
        write_string_field(out, b",\"name\":", &self.name);
        write_string_field(out, b",\"email_address\":", &self.email_address);
        write_string_field(out, b",\"credit_card\":", &self.credit_card);
        write_string_field(out, b",\"city\":", &self.city);
        write_string_field(out, b",\"state\":", &self.state);
        write_timestamp_field(out, b",\"date_time\":", self.date_time);
        write_string_field(out, b",\"extra\":", &self.extra);
        out.push(b'}');
    }
}

impl Auction {
    /// Appends this auction as one flat JSON object (no trailing newline).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        write_int_field(out, b"{\"id\":", self.id);
        write_string_field(out, b",\"item_name\":", &self.item_name);
        write_string_field(out, b",\"description\":", &self.description);
        write_int_field(out, b",\"initial_bid\":", self.initial_bid);
        write_int_field(out, b",\"reserve\":", self.reserve);
        write_timestamp_field(out, b",\"date_time\":", self.date_time);
        write_timestamp_field(out, b",\"expires\":", self.expires);
        write_int_field(out, b",\"seller\":", self.seller);
        write_int_field(out, b",\"category\":", self.category);
        write_string_field(out, b",\"extra\":", &self.extra);
        out.push(b'}');
    }
}

impl Bid {
    /// Appends this bid as one flat JSON object (no trailing newline).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        write_int_field(out, b"{\"auction\":", self.auction);
        write_int_field(out, b",\"bidder\":", self.bidder);
        write_int_field(out, b",\"price\":", self.price);
        write_string_field(out, b",\"channel\":", &self.channel);
        write_string_field(out, b",\"url\":", &self.url);
        write_timestamp_field(out, b",\"date_time\":", self.date_time);
        write_string_field(out, b",\"extra\":", &self.extra);
        out.push(b'}');
    }
}

impl Event {
    /// Appends the event's own flat JSON object; the kind is not recorded,
    /// since each kind normally goes to its own topic.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Event::Person(person) => person.write_json(out),
            Event::Auction(auction) => auction.write_json(out),
            Event::Bid(bid) => bid.write_json(out),
        }
    }

    /// Event time, epoch milliseconds.
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(person) => person.date_time,
            Event::Auction(auction) => auction.date_time,
            Event::Bid(bid) => bid.date_time,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Event::Person(_) => EventKind::Person,
            Event::Auction(_) => EventKind::Auction,
            Event::Bid(_) => EventKind::Bid,
        }
    }
}

/// Writes `ms` (epoch milliseconds) as RFC 3339 UTC with milliseconds, e.g.
/// "2023-11-14T22:13:20.000Z". Any i64 is accepted, but only years 0000..=9999
/// are valid RFC 3339; other years are written with as many digits as needed
/// and a leading '-' when negative.
pub fn format_timestamp_ms(ms: i64, out: &mut Vec<u8>) {
    let days = ms.div_euclid(MS_PER_DAY);
    let ms_of_day = ms.rem_euclid(MS_PER_DAY) as u64;
    let (year, month, day) = civil_from_days(days);
    if year < 0 {
        out.push(b'-');
    }
    write_padded_decimal(out, year.unsigned_abs(), 4);
    out.push(b'-');
    write_padded_decimal(out, month, 2);
    out.push(b'-');
    write_padded_decimal(out, day, 2);
    out.push(b'T');
    write_padded_decimal(out, ms_of_day / 3_600_000, 2);
    out.push(b':');
    write_padded_decimal(out, ms_of_day / 60_000 % 60, 2);
    out.push(b':');
    write_padded_decimal(out, ms_of_day / 1000 % 60, 2);
    out.push(b'.');
    write_padded_decimal(out, ms_of_day % 1000, 3);
    out.push(b'Z');
}

/// (year, month, day) of the proleptic Gregorian calendar for a count of days
/// since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of the year.
    let days_since_march_0000 = days + 719_468;
    let era = days_since_march_0000.div_euclid(146_097);
    let day_of_era = days_since_march_0000.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_based_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_based_month + 2) / 5 + 1;
    let month = if march_based_month < 10 {
        march_based_month + 3
    } else {
        march_based_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u64, day as u64)
}

// Each key argument carries its leading `{` or `,` so a writer is one call per field.
fn write_int_field(out: &mut Vec<u8>, key: &[u8], value: i64) {
    out.extend_from_slice(key);
    write_i64(out, value);
}

fn write_string_field(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    write_json_string(out, value);
}

fn write_timestamp_field(out: &mut Vec<u8>, key: &[u8], ms: i64) {
    out.extend_from_slice(key);
    out.push(b'"');
    format_timestamp_ms(ms, out);
    out.push(b'"');
}

fn write_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut unwritten_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if byte != b'"' && byte != b'\\' && byte >= 0x20 {
            continue;
        }
        out.extend_from_slice(&bytes[unwritten_from..index]);
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            control => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX_DIGITS[usize::from(control >> 4)]);
                out.push(HEX_DIGITS[usize::from(control & 0x0f)]);
            }
        }
        unwritten_from = index + 1;
    }
    out.extend_from_slice(&bytes[unwritten_from..]);
    out.push(b'"');
}

fn write_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    write_padded_decimal(out, value.unsigned_abs(), 1);
}

fn write_padded_decimal(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut buffer = [0u8; 20];
    let digits = decimal_digits(value, &mut buffer);
    for _ in digits.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(digits);
}

fn push_padded_decimal(out: &mut String, value: u64, width: usize) {
    let mut buffer = [0u8; 20];
    let digits = decimal_digits(value, &mut buffer);
    for _ in digits.len()..width {
        out.push('0');
    }
    for &digit in digits {
        out.push(char::from(digit));
    }
}

/// ASCII digits of `value`, written at the end of `buffer` (u64 has at most 20).
fn decimal_digits(mut value: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    for slot in buffer.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
        start -= 1;
        if value == 0 {
            break;
        }
    }
    &buffer[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const PERSON_KEYS: &[&str] = &[
        "id",
        "name",
        "email_address",
        "credit_card",
        "city",
        "state",
        "date_time",
        "extra",
    ];
    const AUCTION_KEYS: &[&str] = &[
        "id",
        "item_name",
        "description",
        "initial_bid",
        "reserve",
        "date_time",
        "expires",
        "seller",
        "category",
        "extra",
    ];
    const BID_KEYS: &[&str] = &[
        "auction",
        "bidder",
        "price",
        "channel",
        "url",
        "date_time",
        "extra",
    ];

    fn first_events(config: GeneratorConfig, count: usize) -> Vec<Event> {
        let mut generator = Generator::new(config);
        (0..count).map(|_| generator.next_event()).collect()
    }

    fn timestamp_text(ms: i64) -> String {
        let mut out = Vec::new();
        format_timestamp_ms(ms, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Parses `json` and checks it is an object with exactly `keys`, in order.
    fn parse_object(json: &[u8], keys: &[&str]) -> Value {
        let value: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(value.as_object().unwrap().len(), keys.len());
        let text = std::str::from_utf8(json).unwrap();
        let mut previous_position = 0;
        for key in keys {
            let position = text.find(&format!("\"{key}\":")).unwrap();
            assert!(
                position >= previous_position,
                "key {key} out of order in {text}"
            );
            previous_position = position;
        }
        value
    }

    #[test]
    fn same_seed_gives_same_stream_and_other_seed_differs() {
        let first = first_events(GeneratorConfig::default(), 10_000);
        let second = first_events(GeneratorConfig::default(), 10_000);
        assert_eq!(first, second);
        let other_seed = GeneratorConfig {
            seed: 42,
            ..GeneratorConfig::default()
        };
        let other = first_events(other_seed, 10_000);
        assert_ne!(first, other);
    }

    #[test]
    fn skip_to_reproduces_the_same_events() {
        let reference = first_events(GeneratorConfig::default(), 2_000);
        let mut generator = Generator::new(GeneratorConfig::default());
        for n in [0u64, 1, 2, 3, 4, 5, 49, 50, 51, 53, 54, 999, 1_000, 1_999] {
            generator.skip_to(n);
            assert_eq!(generator.event_number(), n);
            let event = generator.next_event();
            assert_eq!(event.kind(), Generator::kind_of(n));
            assert_eq!(event, reference[n as usize], "event {n}");
            assert_eq!(generator.event_number(), n + 1);
        }

        // Three generators interleaving one stream reproduce it exactly.
        let mut splits: Vec<Generator> = (0..3)
            .map(|_| Generator::new(GeneratorConfig::default()))
            .collect();
        for n in 0..600u64 {
            let split = &mut splits[(n % 3) as usize];
            split.skip_to(n);
            assert_eq!(split.next_event(), reference[n as usize]);
        }

        // Far-away events need no replay and still follow the id rules.
        let far = 10_000_000_000u64;
        generator.skip_to(far);
        match generator.next_event() {
            Event::Person(person) => assert_eq!(person.id, FIRST_PERSON_ID + (far / 50) as i64),
            other => panic!("expected a person, got {other:?}"),
        }
    }

    #[test]
    fn the_kth_event_of_a_kind_is_found_by_number() {
        for kind in [EventKind::Person, EventKind::Auction, EventKind::Bid] {
            let numbers: Vec<u64> = (0..500u64)
                .filter(|n| Generator::kind_of(*n) == kind)
                .collect();
            for (k, n) in numbers.iter().enumerate() {
                assert_eq!(
                    Generator::event_number_of(kind, k as u64),
                    *n,
                    "{kind:?} {k}"
                );
            }
        }
    }

    #[test]
    fn next_bid_skips_persons_and_auctions() {
        let reference = first_events(GeneratorConfig::default(), 1_000);
        let expected: Vec<Bid> = reference
            .into_iter()
            .filter_map(|event| match event {
                Event::Bid(bid) => Some(bid),
                _ => None,
            })
            .collect();
        let mut generator = Generator::new(GeneratorConfig::default());
        let bids: Vec<Bid> = (0..expected.len()).map(|_| generator.next_bid()).collect();
        assert_eq!(bids, expected);
        assert_eq!(generator.event_number(), 1_000);
    }

    #[test]
    fn proportions_are_1_3_46_out_of_50() {
        let (mut persons, mut auctions, mut bids) = (0, 0, 0);
        for event in first_events(GeneratorConfig::default(), 50_000) {
            match event {
                Event::Person(_) => persons += 1,
                Event::Auction(_) => auctions += 1,
                Event::Bid(_) => bids += 1,
            }
        }
        assert_eq!((persons, auctions, bids), (1_000, 3_000, 46_000));
    }

    #[test]
    fn ids_are_consecutive_and_references_point_at_existing_or_lead_ids() {
        let mut last_person_id = FIRST_PERSON_ID - 1;
        let mut last_auction_id = FIRST_AUCTION_ID - 1;
        let mut hot_auction_bids = 0;
        for event in first_events(GeneratorConfig::default(), 50_000) {
            match event {
                Event::Person(person) => {
                    assert_eq!(person.id, last_person_id + 1);
                    last_person_id = person.id;
                }
                Event::Auction(auction) => {
                    assert_eq!(auction.id, last_auction_id + 1);
                    last_auction_id = auction.id;
                    assert!(auction.seller >= FIRST_PERSON_ID);
                    assert!(auction.seller <= last_person_id + PERSON_ID_LEAD);
                    assert!((FIRST_CATEGORY_ID..FIRST_CATEGORY_ID + NUM_CATEGORIES)
                        .contains(&auction.category));
                    assert!(auction.reserve >= auction.initial_bid);
                }
                Event::Bid(bid) => {
                    assert!(bid.auction >= FIRST_AUCTION_ID);
                    assert!(bid.auction <= last_auction_id + AUCTION_ID_LEAD);
                    assert!(bid.bidder >= FIRST_PERSON_ID);
                    assert!(bid.bidder <= last_person_id + PERSON_ID_LEAD);
                    assert!((100..=100_000_000).contains(&bid.price));
                    if (bid.auction - FIRST_AUCTION_ID) % 100 == 0 {
                        hot_auction_bids += 1;
                    }
                }
            }
        }
        assert_eq!(last_person_id, FIRST_PERSON_ID + 999);
        assert_eq!(last_auction_id, FIRST_AUCTION_ID + 2_999);
        // With hot_auction_ratio 2, about half of all bids go to hot auctions.
        assert!(
            hot_auction_bids > 46_000 * 2 / 5,
            "{hot_auction_bids} hot bids"
        );
    }

    #[test]
    fn timestamps_follow_the_event_rate() {
        let config = GeneratorConfig::default();
        let base = config.base_time_ms;
        for (n, event) in first_events(config, 10_000).iter().enumerate() {
            assert_eq!(event.date_time(), base + n as i64 * 1000 / 10_000);
            if let Event::Auction(auction) = event {
                assert!(auction.expires > auction.date_time);
            }
        }
        let slow = GeneratorConfig {
            base_time_ms: 0,
            events_per_second: 3,
            ..GeneratorConfig::default()
        };
        let times: Vec<i64> = first_events(slow, 5).iter().map(Event::date_time).collect();
        assert_eq!(times, vec![0, 333, 666, 1_000, 1_333]);
    }

    #[test]
    fn json_matches_the_structs() {
        let mut bid_bytes = 0;
        let mut bid_count = 0;
        let mut out = Vec::new();
        for event in first_events(GeneratorConfig::default(), 50_000) {
            out.clear();
            event.write_json(&mut out);
            let (keys, expected) = match &event {
                Event::Person(p) => (
                    PERSON_KEYS,
                    json!({
                        "id": p.id, "name": p.name, "email_address": p.email_address,
                        "credit_card": p.credit_card, "city": p.city, "state": p.state,
                        "date_time": timestamp_text(p.date_time), "extra": p.extra,
                    }),
                ),
                Event::Auction(a) => (
                    AUCTION_KEYS,
                    json!({
                        "id": a.id, "item_name": a.item_name, "description": a.description,
                        "initial_bid": a.initial_bid, "reserve": a.reserve,
                        "date_time": timestamp_text(a.date_time), "expires": timestamp_text(a.expires),
                        "seller": a.seller, "category": a.category, "extra": a.extra,
                    }),
                ),
                Event::Bid(b) => {
                    assert!(b.url.starts_with("https://www.nexmark.com/"));
                    assert!(b.url.contains("/item.htm?query=1"));
                    bid_bytes += out.len();
                    bid_count += 1;
                    let expected = json!({
                        "auction": b.auction, "bidder": b.bidder, "price": b.price,
                        "channel": b.channel, "url": b.url,
                        "date_time": timestamp_text(b.date_time), "extra": b.extra,
                    });
                    (BID_KEYS, expected)
                }
            };
            assert_eq!(parse_object(&out, keys), expected);
        }
        let average_bid_bytes = bid_bytes / bid_count;
        assert!(
            (100..=300).contains(&average_bid_bytes),
            "average bid JSON is {average_bid_bytes} bytes"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let person = Person {
            id: -7,
            name: "quote\" backslash\\ newline\n tab\t bell\u{7} é".to_owned(),
            email_address: String::new(),
            credit_card: String::new(),
            city: String::new(),
            state: String::new(),
            date_time: 0,
            extra: String::new(),
        };
        let mut out = Vec::new();
        person.write_json(&mut out);
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["id"].as_i64(), Some(-7));
        assert_eq!(value["name"].as_str(), Some(person.name.as_str()));
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(timestamp_text(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            timestamp_text(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(timestamp_text(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            timestamp_text(1_709_164_800_000 + 86_399_999),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(
            timestamp_text(1_709_251_200_000),
            "2024-03-01T00:00:00.000Z"
        );
        assert_eq!(timestamp_text(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            timestamp_text(-2_208_988_800_000),
            "1900-01-01T00:00:00.000Z"
        );
        assert_eq!(
            timestamp_text(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
    }
}
