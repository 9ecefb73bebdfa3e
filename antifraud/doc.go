// Package antifraud will hold flashgate's pure risk rules: per-IP / device /
// user limits and their windows, blacklists, alert thresholds and shadow mode
// (issue 5). It does no I/O and takes a clock; the gateway feeds it requests
// and applies its verdicts. internal/lint keeps it free of I/O imports.
//
// It is empty in this version: the claim path has no risk rules yet.
package antifraud
