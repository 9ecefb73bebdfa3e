package checkout

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Limits on one quote's input. Each bounds the work of a quote and keeps every
// sum far from int64 overflow: the largest order is ItemsMax × QuantityMax ×
// UnitPriceMax ≈ 2·10^15 cents (2^63 ≈ 9.2·10^18); products of two amounts
// (proportional shares) are formed in 128 bits.
const (
	// ItemsMax bounds an order's lines: a marketplace cart holds a few
	// hundred lines at most, and every coupon's math is linear in them.
	ItemsMax = 200
	// QuantityMax bounds one line's quantity; refunds walk a line unit by
	// unit (refund.go), so this also bounds a refund's work.
	QuantityMax = 9_999
	// UnitPriceMax bounds a unit price: $10,000,000.00.
	UnitPriceMax = 1_000_000_000
	// ShippingFeeMax bounds one store's shipping fee: $1,000,000.00.
	ShippingFeeMax = 100_000_000
	// OffersMax bounds the offers an order declares (bundles, store
	// promotions already reflected in its prices).
	OffersMax = 32
	// CouponsMax bounds the coupons offered to one quote (a user's wallet);
	// each costs one pass over the order's lines before any search.
	CouponsMax = 256
	// TiersMax mirrors campaign.TiersMax.
	TiersMax = 20
	// ScopeEntriesMax mirrors campaign.ScopeEntriesMax.
	ScopeEntriesMax = 1000
	// IDLenMax bounds every identifier: SKU, store, category, brand, offer,
	// grant and campaign ids.
	IDLenMax = 128
)

// ErrInvalid is wrapped by every input error (a FieldError): the caller's
// order, coupons or choice are malformed; the HTTP layer answers 400.
var ErrInvalid = errors.New("checkout: invalid input")

// ErrUnknownGrant is wrapped when a chosen grant id is not among the coupons
// offered. The HTTP layer decides what that means: a grant not yet in the
// store (pipeline lag, retryable) or no such grant.
var ErrUnknownGrant = errors.New("checkout: unknown grant")

// FieldError names one invalid field; a quote's errors are joined, every
// wrong field named at once.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return "checkout: " + e.Field + ": " + e.Msg }

// Unwrap makes every FieldError an ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// Item is one order line.
type Item struct {
	SKU       string `json:"sku"`
	StoreID   string `json:"store_id"`
	Category  string `json:"category,omitempty"`
	Brand     string `json:"brand,omitempty"`
	UnitPrice int64  `json:"unit_price"` // cents, after the declared offers
	Quantity  int64  `json:"quantity"`
}

// Amount is the line's price: unit price × quantity.
func (it *Item) Amount() int64 { return it.UnitPrice * it.Quantity }

// Order is what the caller asks a quote for. Declared offers are already
// reflected in the unit prices and fees; they matter here only to coupons
// that refuse to combine with offers (Coupon.NotStackable).
type Order struct {
	Items    []Item           `json:"items"`
	Shipping map[string]int64 `json:"shipping,omitempty"` // store id → fee, cents
	Offers   []string         `json:"offers,omitempty"`
}

// Validate reports every invalid field of the order at once.
func (o *Order) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if len(o.Items) == 0 || len(o.Items) > ItemsMax {
		bad("items", "must have 1..%d lines", ItemsMax)
	}
	stores := map[string]bool{}
	for i, it := range o.Items {
		if i >= ItemsMax {
			break
		}
		f := fmt.Sprintf("items[%d]", i)
		checkID(bad, f+".sku", it.SKU, true)
		checkID(bad, f+".store_id", it.StoreID, true)
		checkID(bad, f+".category", it.Category, false)
		checkID(bad, f+".brand", it.Brand, false)
		if it.UnitPrice < 0 || it.UnitPrice > UnitPriceMax {
			bad(f+".unit_price", "must be 0..%d cents", UnitPriceMax)
		}
		if it.Quantity < 1 || it.Quantity > QuantityMax {
			bad(f+".quantity", "must be 1..%d", QuantityMax)
		}
		stores[it.StoreID] = true
	}
	for _, s := range slices.Sorted(maps.Keys(o.Shipping)) {
		fee := o.Shipping[s]
		if !stores[s] {
			bad("shipping."+s, "no line of the order is from this store")
		}
		if fee < 0 || fee > ShippingFeeMax {
			bad("shipping."+s, "must be 0..%d cents", ShippingFeeMax)
		}
	}
	if len(o.Offers) > OffersMax {
		bad("offers", "at most %d", OffersMax)
	}
	for i, of := range o.Offers {
		checkID(bad, fmt.Sprintf("offers[%d]", i), of, true)
	}
	return errors.Join(errs...)
}

func checkID(bad func(field, format string, args ...any), field, v string, required bool) {
	switch {
	case required && strings.TrimSpace(v) == "":
		bad(field, "is required")
	case len(v) > IDLenMax:
		bad(field, "at most %d bytes", IDLenMax)
	}
}
