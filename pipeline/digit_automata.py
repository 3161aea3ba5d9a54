"""libphonenumber's digit patterns as deterministic automata in one table, run over many numbers by polars.

phonenumbers decides which numbers are valid with regular expressions over digits: each region's general pattern,
one per type of number, the leading digits that pick a region. polars could match them with its regex engine, but
it compiles a pattern anew in each query (it keeps only a few dozen compiled per thread), and the world's patterns
take ~0.3 s to compile: a fixed cost that batch after batch was most of deciding a file's numbers. Here each
region's patterns are compiled once per process into a deterministic automaton, all regions' in one transition
table; matching a column of numbers is then nine table lookups per number (two digits a step), whatever the
patterns, with nothing to compile per query.

The patterns use a small part of regular expression syntax - digits, classes of digits, `\\d`, groups,
alternation and counted repetition - which `parse` reads; anything else raises `UnsupportedPattern`, and the caller
leaves those regions to phonenumbers itself.

How numbers are read: a number of up to 18 digits is one unsigned 64-bit integer, right-aligned in 18 digit places;
each automaton has a chain of 18 "padding" states before its start, and the start state a number begins in depends
on its length, so the leading zeros that fill the places before its first digit walk down the chain and its own
digits (zeros included) start from the real start state.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

DIGITS = 18  # digits a number may have to be read: 18 fit in an unsigned 64-bit integer
_PAIR_STEPS = DIGITS // 2
_DEAD = 0  # no pattern can match any more; every automaton falls into it
_PASSED = 1  # a prefix automaton's pattern matched a leading part: accepted whatever follows
_ALL_DIGITS = frozenset(range(10))


class UnsupportedPattern(Exception):
    """A pattern outside the syntax `parse` reads (or that polars' regex engine would not take, for the callers
    that still use it): the numbers it concerns are left to phonenumbers."""


# --- reading patterns ------------------------------------------------------------------------------------------

# A parsed pattern: ("set", digits) one digit of the set; ("seq", items); ("alt", branches);
# ("repeat", item, least, most or None for no limit).
_Node = tuple[Any, ...]


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def peek(self) -> str | None:
        return self.text[self.at] if self.at < len(self.text) else None

    def take(self) -> str:
        char = self.peek()
        if char is None:
            raise UnsupportedPattern(self.text)
        self.at += 1
        return char

    def alternation(self) -> _Node:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.at += 1
            branches.append(self.sequence())
        return ("alt", branches) if len(branches) > 1 else branches[0]

    def sequence(self) -> _Node:
        items = []
        while self.peek() not in (None, "|", ")"):
            items.append(self.repetition(self.atom()))
        return ("seq", items)

    def atom(self) -> _Node:
        char = self.take()
        if char == "(":
            if self.text.startswith("?:", self.at):
                self.at += 2
            inner = self.alternation()
            if self.take() != ")":
                raise UnsupportedPattern(self.text)
            return inner
        if char == "[":
            return ("set", self.digit_class())
        if char == "\\":
            if self.take() != "d":
                raise UnsupportedPattern(self.text)
            return ("set", _ALL_DIGITS)
        if char.isascii() and char.isdigit():
            return ("set", frozenset([int(char)]))
        raise UnsupportedPattern(self.text)

    def digit_class(self) -> frozenset[int]:
        negated = self.peek() == "^"
        if negated:
            self.at += 1
        members: set[int] = set()
        while (char := self.take()) != "]":
            if char == "\\":
                if self.take() != "d":
                    raise UnsupportedPattern(self.text)
                members |= _ALL_DIGITS
                continue
            if not (char.isascii() and char.isdigit()):
                raise UnsupportedPattern(self.text)
            if self.peek() == "-" and self.text[self.at + 1 : self.at + 2] not in ("]", ""):
                self.at += 1
                last = self.take()
                if not (last.isascii() and last.isdigit()):
                    raise UnsupportedPattern(self.text)
                members.update(range(int(char), int(last) + 1))
            else:
                members.add(int(char))
        return frozenset(_ALL_DIGITS - members if negated else members)

    def repetition(self, item: _Node) -> _Node:
        char = self.peek()
        if char == "?":
            self.at += 1
            return ("repeat", item, 0, 1)
        if char == "*":
            self.at += 1
            return ("repeat", item, 0, None)
        if char == "+":
            self.at += 1
            return ("repeat", item, 1, None)
        if char == "{":
            end = self.text.find("}", self.at)
            body = self.text[self.at + 1 : end]
            self.at = end + 1
            least, comma, most = body.partition(",")
            if end < 0 or not least.isdigit() or (most and not most.isdigit()):
                raise UnsupportedPattern(self.text)
            return ("repeat", item, int(least), (int(most) if most else None) if comma else int(least))
        return item


def parse(pattern: str) -> _Node:
    """The pattern's syntax tree; UnsupportedPattern if it uses more than digits, classes, `\\d`, groups,
    alternation and repetition (or is followed by a lazy or possessive marker)."""
    reader = _Reader(pattern)
    tree = reader.alternation()
    if reader.peek() is not None:
        raise UnsupportedPattern(pattern)
    return tree


# --- building automata -----------------------------------------------------------------------------------------


class _Nfa:
    """A nondeterministic automaton with empty moves (Thompson's construction)."""

    def __init__(self) -> None:
        self.empty: list[list[int]] = []
        self.moves: list[list[tuple[frozenset[int], int]]] = []

    def state(self) -> int:
        self.empty.append([])
        self.moves.append([])
        return len(self.empty) - 1

    def add(self, node: _Node, start: int) -> int:
        """Adds `node` reading from `start`; returns the state it ends in."""
        kind = node[0]
        if kind == "set":
            end = self.state()
            self.moves[start].append((node[1], end))
            return end
        if kind == "seq":
            for item in node[1]:
                start = self.add(item, start)
            return start
        if kind == "alt":
            end = self.state()
            for branch in node[1]:
                entry = self.state()
                self.empty[start].append(entry)
                self.empty[self.add(branch, entry)].append(end)
            return end
        _, item, least, most = node
        for _ in range(least):
            start = self.add(item, start)
        if most is None:
            loop = self.state()
            self.empty[start].append(loop)
            self.empty[self.add(item, loop)].append(loop)
            return loop
        end = self.state()
        self.empty[start].append(end)
        for _ in range(most - least):
            start = self.add(item, start)
            self.empty[start].append(end)
        return end


class Builder:
    """Collects automata into one table: state 0 is dead, state 1 accepts whatever follows (prefix matches)."""

    def __init__(self) -> None:
        self._next: list[int] = [_DEAD] * 10 + [_PASSED] * 10  # per state, its next state for each digit
        self._tags: list[int] = [0, 1]
        self._starts: list[int] = []

    def add(self, patterns: Sequence[str | None], *, prefix: bool = False) -> int:
        """A new automaton (its number): bit i of what it reports is set when `patterns[i]` matches the whole
        number or, with `prefix`, a leading part of it. A None pattern never matches."""
        nfa = _Nfa()
        start = nfa.state()
        accepting: dict[int, int] = {}
        for bit, pattern in enumerate(patterns):
            if pattern is None:
                continue
            entry = nfa.state()
            nfa.empty[start].append(entry)
            end = nfa.add(parse(pattern), entry)
            accepting[end] = accepting.get(end, 0) | 1 << bit
        every = sum(1 << bit for bit, pattern in enumerate(patterns) if pattern is not None)
        first = self._determinise(nfa, start, accepting, every if prefix else 0)
        self._starts.append(self._padded(first))
        return len(self._starts) - 1

    def _determinise(self, nfa: _Nfa, start: int, accepting: dict[int, int], prefixes: int) -> int:
        """The subset construction. Sets of NFA states are bit sets holding only the states that read a digit or
        accept (states with only empty moves add nothing to what a set does). For prefix matching (`prefixes`:
        the bits of all patterns) a state is also what has matched so far, which it keeps reporting; once
        nothing more can match, it reads on in a state of its own."""
        count = len(nfa.empty)
        useful = [bool(nfa.moves[n]) or n in accepting for n in range(count)]
        closures: list[int | None] = [None] * count

        def closure(n: int) -> int:
            found = closures[n]
            if found is None:
                seen, stack = {n}, [n]
                while stack:
                    for m in nfa.empty[stack.pop()]:
                        if m not in seen:
                            seen.add(m)
                            stack.append(m)
                found = sum(1 << m for m in seen if useful[m])
                closures[n] = found
            return found

        after: list[list[int] | None] = [None] * count  # per NFA state: the set reached on each digit
        for n in range(count):
            if nfa.moves[n]:
                row = [0] * 10
                for digits, m in nfa.moves[n]:
                    reached = closure(m)
                    for digit in digits:
                        row[digit] |= reached
                after[n] = row
        accepting_set = sum(1 << n for n in accepting)

        def tags_of(members: int) -> int:
            if not members & accepting_set:
                return 0
            return sum(bits for n, bits in accepting.items() if members >> n & 1)

        ids: dict[tuple[int, int], int] = {(0, 0): _DEAD, (0, 1): _PASSED}
        pending: list[tuple[int, int]] = []

        def state_for(members: int, matched: int) -> int:
            if prefixes and matched == prefixes:
                members = 0  # every pattern has matched: what follows changes nothing
            found = ids.get((members, matched))
            if found is None:
                found = ids[members, matched] = len(self._tags)
                self._tags.append(0)
                self._next.extend([_DEAD] * 10)
                pending.append((members, matched))
            return found

        first_members = closure(start)
        first = state_for(first_members, tags_of(first_members) if prefixes else 0)
        while pending:
            members, matched = pending.pop()
            here = ids[members, matched]
            self._tags[here] = matched if prefixes else tags_of(members)
            rows = []
            rest = members
            while rest:
                low = rest & -rest
                rest ^= low
                moves = after[low.bit_length() - 1]
                if moves is not None:
                    rows.append(moves)
            base = here * 10
            for digit in range(10):
                reached = 0
                for row in rows:
                    reached |= row[digit]
                self._next[base + digit] = state_for(reached, matched | tags_of(reached) if prefixes else 0)
        return first

    def _padded(self, first: int) -> int:
        """A chain of DIGITS states leading to `first` on zeros; returns the chain's head (see the module
        docstring): a number of `k` digits starts `k` states down the chain."""
        head = first
        for _ in range(DIGITS):
            state = len(self._tags)
            self._tags.append(0)
            self._next.extend([head] + [_DEAD] * 9)
            head = state
        return head

    def freeze(self) -> Automata:
        size = len(self._tags)
        step = pl.Series(self._next, dtype=pl.UInt32)
        # two digits a step: pairs[s * 100 + a * 10 + b] = next[next[s * 10 + a] * 10 + b]
        index = pl.int_range(0, size * 100, dtype=pl.UInt32, eager=True)
        middle = step.gather(index // 100 * 10 + index // 10 % 10)
        pairs = step.gather(middle * 10 + index % 10)
        # the padding chains: a number of length n starts n states down its automaton's chain
        starts: list[int] = []
        for head in self._starts:
            chain = [head]
            for _ in range(DIGITS):
                chain.append(self._next[chain[-1] * 10])
            starts += [chain[length] for length in range(DIGITS + 1)]
        return Automata(
            pairs=pairs,
            tags=pl.Series(self._tags, dtype=pl.UInt32),
            starts=pl.Series(starts, dtype=pl.UInt32),
        )


@dataclass(frozen=True)
class Automata:
    """The frozen table: `pairs` (next state for each state and two digits), `tags` (what each state reports) and
    `starts` (per automaton and length 0-18, the state a number of that length starts in)."""

    pairs: pl.Series
    tags: pl.Series
    starts: pl.Series

    def run(self, digits: pl.Series, automata: pl.Series | int) -> pl.Series:
        """What the automata report for the ASCII digit strings `digits`: each number's automaton (its number from
        `Builder.add`; null: none) or one for all. A UInt32 of pattern bits: 0 for a null text, for a text of
        more than DIGITS digits or not all digits, and where the automaton is null."""
        if isinstance(automata, pl.Series):
            frame = pl.DataFrame([digits.alias(_TEXT), automata.cast(pl.UInt32).alias(_WHICH)])
        else:
            frame = digits.to_frame(_TEXT).with_columns(pl.lit(automata, dtype=pl.UInt32).alias(_WHICH))
        query = frame.lazy().with_columns(pl.col(_TEXT).cast(pl.UInt64, strict=False).alias(_VALUE))
        # No optimisations: there is nothing to optimise in one select, and the planner would hash the tables
        # (literals in the expression) at every use, which takes milliseconds.
        return query.select(self._reading.alias(digits.name)).collect(optimizations=pl.QueryOptFlags.none()).to_series()

    @functools.cached_property
    def _reading(self) -> pl.Expr:
        """The expression `run` evaluates over the columns `_TEXT`, `_VALUE` (the text as a number) and `_WHICH`,
        built once: building it takes longer than running it on a few thousand numbers."""
        length = pl.col(_TEXT).str.len_bytes()
        value = pl.col(_VALUE)
        # the cast also takes a leading "+", which is not a digit
        digits_only = (value.is_not_null() & ~pl.col(_TEXT).str.starts_with("+")) | (length == 0)
        readable = (length <= DIGITS) & digits_only & pl.col(_WHICH).is_not_null()
        first = pl.col(_WHICH) * (DIGITS + 1) + length.clip(upper_bound=DIGITS).cast(pl.UInt32)
        state = pl.when(readable).then(pl.lit(self.starts).gather(first.fill_null(0))).otherwise(_DEAD)
        digits_left = value.fill_null(0)
        for step in range(_PAIR_STEPS):
            place = pl.lit(10 ** (DIGITS - 2 - 2 * step), dtype=pl.UInt64)
            pair = (digits_left // place % pl.lit(100, dtype=pl.UInt64)).cast(pl.UInt32)
            state = pl.lit(self.pairs).gather(state.cast(pl.UInt32) * 100 + pair)
        return pl.lit(self.tags).gather(state)


_TEXT, _VALUE, _WHICH = "text", "value", "which"
