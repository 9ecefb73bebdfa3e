package checkout

import "math/bits"

// mulDiv is ⌊a·b/c⌋ for a, b ≥ 0, c > 0, formed in 128 bits; the result must
// fit an int64 (callers keep a·b/c ≤ max(a, b)).
func mulDiv(a, b, c int64) int64 {
	q, _ := mulDivRem(a, b, c)
	return q
}

func mulDivRem(a, b, c int64) (q, r int64) {
	if a < 0 || b < 0 || c <= 0 {
		panic("checkout: mulDiv of a negative amount or by a non-positive divisor")
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi >= uint64(c) {
		panic("checkout: mulDiv quotient overflows")
	}
	uq, ur := bits.Div64(hi, lo, uint64(c))
	if uq > 1<<63-1 {
		panic("checkout: mulDiv quotient overflows")
	}
	return int64(uq), int64(ur)
}

// apportioner splits an amount over weights in whole cents by the largest
// remainder: each position first gets ⌊d·w/W⌋, then the cents left over go
// one each to the positions with the largest remainders d·w mod W, ties to
// the lower position. The shares sum to d exactly, and none exceeds its
// weight when d ≤ W. It keeps its scratch between calls (not safe for
// concurrent use; a quote owns one).
type apportioner struct {
	keys []uint64
}

// Bounds of a split, so that a remainder and a position pack into one
// sort key (remainder << apportionPosBits | inverted position): weights sum
// below 2^apportionWeightBits (an order's items are below 2^51) and there
// are at most 2^apportionPosBits positions (ItemsMax lines, or the coupons
// on one line: at most CouponsMax).
const (
	apportionPosBits    = 9
	apportionWeightBits = 63 - apportionPosBits
)

// split writes into out (len(w)) the shares of d ≤ Σw.
func (a *apportioner) split(d int64, w []int64, out []int64) {
	var total int64
	for _, x := range w {
		total += x
	}
	if d < 0 || d > total || total >= 1<<apportionWeightBits || len(w) > 1<<apportionPosBits {
		panic("checkout: apportion out of bounds")
	}
	clear(out)
	if d == 0 {
		return
	}
	a.keys = a.keys[:0]
	left := d
	for i, x := range w {
		q, r := mulDivRem(d, x, total)
		out[i] = q
		left -= q
		if r > 0 {
			a.keys = append(a.keys, uint64(r)<<apportionPosBits|uint64(1<<apportionPosBits-1-i))
		}
	}
	if left == 0 {
		return
	}
	// left < number of positive remainders: Σ r_i = left·W and each r_i < W.
	// The largest keys: the largest remainders, ties to the lowest position.
	selectTop(a.keys, int(left))
	for _, k := range a.keys[len(a.keys)-int(left):] {
		out[1<<apportionPosBits-1-int(k&(1<<apportionPosBits-1))]++
	}
}

// selectTop arranges distinct keys so that the last k are the k largest
// (quickselect, median of three: linear on average, where a sort was half
// of a best-combination search).
func selectTop(a []uint64, k int) {
	t := len(a) - k // a[t:] must end up holding the k largest
	lo, hi := 0, len(a)-1
	for lo < hi {
		mid := lo + (hi-lo)/2
		if a[mid] < a[lo] {
			a[mid], a[lo] = a[lo], a[mid]
		}
		if a[hi] < a[lo] {
			a[hi], a[lo] = a[lo], a[hi]
		}
		if a[mid] < a[hi] {
			a[mid], a[hi] = a[hi], a[mid]
		}
		p, s := a[hi], lo // the median of three, at hi
		for i := lo; i < hi; i++ {
			if a[i] < p {
				a[i], a[s] = a[s], a[i]
				s++
			}
		}
		a[s], a[hi] = a[hi], a[s] // a[lo:s] < p = a[s] < a[s+1:hi+1]
		switch {
		case s == t:
			return
		case s < t:
			lo = s + 1
		default:
			hi = s - 1
		}
	}
}
