package adapters

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// matchName accepts exactly what NamePattern and HeaderNamePattern accept:
// chosen edge cases, then random strings over an alphabet with every class
// of character the patterns tell apart.
func TestMatchNameAgreesWithPatterns(t *testing.T) {
	nameRE, headerRE := regexp.MustCompile(NamePattern), regexp.MustCompile(HeaderNamePattern)
	check := func(s string) {
		if got, want := matchName(s, false), nameRE.MatchString(s); got != want {
			t.Errorf("name %q: matchName %v, NamePattern %v", s, got, want)
		}
		if got, want := matchName(s, true), headerRE.MatchString(s); got != want {
			t.Errorf("header %q: matchName %v, HeaderNamePattern %v", s, got, want)
		}
	}
	for _, s := range []string{"", "a", "_a", "-a", ".a", "a_", "a-", "a.", "a.b", "Z9", "é", "a b", "a\n",
		strings.Repeat("a", 64), strings.Repeat("a", 65), "a" + strings.Repeat("-", 63), "a\x00"} {
		check(s)
	}
	const alphabet = "aZ09_-.:/ é\n"
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := make([]byte, rng.IntN(70))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		check(string(b))
	}
}
