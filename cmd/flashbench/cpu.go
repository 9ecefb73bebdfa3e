package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/flashgate/flashgate/internal/procstat"
)

// procs are the processes whose CPU time flashbench speed divides by the
// requests they served (0: not measured).
type procs struct{ gateway, redis, hello int }

// cpuUse is CPU time used by each measured process (and flashbench itself).
type cpuUse struct{ gateway, redis, hello, self time.Duration }

func (p procs) read() cpuUse {
	at := func(pid int) time.Duration {
		if pid <= 0 {
			return 0
		}
		d, err := procstat.CPU(pid)
		if err != nil {
			return 0
		}
		return d
	}
	return cpuUse{gateway: at(p.gateway), redis: at(p.redis), hello: at(p.hello), self: at(os.Getpid())}
}

func (u cpuUse) minus(v cpuUse) cpuUse {
	return cpuUse{gateway: u.gateway - v.gateway, redis: u.redis - v.redis, hello: u.hello - v.hello, self: u.self - v.self}
}

// cpuFigures are microseconds of CPU (user + system, /proc/<pid>/stat) per
// request over the saturation runs: the hello-world server per request, the
// gateway and redis-server per granted claim, and flashbench per request of
// each run. Steadier than throughput when the machine is shared.
type cpuFigures struct {
	HelloPerRequest     float64 `json:"hello_per_request,omitempty"`
	GatewayPerClaim     float64 `json:"gateway_per_granted_claim,omitempty"`
	RedisPerClaim       float64 `json:"redis_per_granted_claim,omitempty"`
	GatewayOverHello    float64 `json:"gateway_over_hello,omitempty"`
	LoadgenPerHello     float64 `json:"flashbench_per_hello_request,omitempty"`
	LoadgenPerClaim     float64 `json:"flashbench_per_claim,omitempty"`
	HelloSeconds        float64 `json:"hello_cpu_seconds,omitempty"`
	GatewaySeconds      float64 `json:"gateway_cpu_seconds,omitempty"`
	RedisSeconds        float64 `json:"redis_cpu_seconds,omitempty"`
	GrantedInClaimsRun  int64   `json:"granted_in_saturation_run"`
	RequestsInHelloRun  int64   `json:"requests_in_hello_run"`
	ClockTickResolution float64 `json:"tick_seconds"` // of the CPU times read
}

func cpuPerRequest(hello cpuUse, helloReqs int64, claims cpuUse, granted int64) cpuFigures {
	us := func(d time.Duration, n int64) float64 {
		if n <= 0 {
			return 0
		}
		return float64(d.Microseconds()) / float64(n)
	}
	f := cpuFigures{
		HelloPerRequest: us(hello.hello, helloReqs), GatewayPerClaim: us(claims.gateway, granted), RedisPerClaim: us(claims.redis, granted),
		LoadgenPerHello: us(hello.self, helloReqs), LoadgenPerClaim: us(claims.self, granted),
		HelloSeconds: hello.hello.Seconds(), GatewaySeconds: claims.gateway.Seconds(), RedisSeconds: claims.redis.Seconds(),
		GrantedInClaimsRun: granted, RequestsInHelloRun: helloReqs, ClockTickResolution: 0.01,
	}
	if f.HelloPerRequest > 0 {
		f.GatewayOverHello = f.GatewayPerClaim / f.HelloPerRequest
	}
	return f
}

func (f cpuFigures) table(p procs) string {
	var b strings.Builder
	b.WriteString("CPU per request (user + system from /proc/<pid>/stat over the saturation runs):\n")
	if p.hello > 0 {
		fmt.Fprintf(&b, "  hello-world server %8.1f µs per request       (%d requests, %.2f CPU-s)\n", f.HelloPerRequest, f.RequestsInHelloRun, f.HelloSeconds)
	}
	if p.gateway > 0 {
		fmt.Fprintf(&b, "  gateway            %8.1f µs per granted claim (%d granted, %.2f CPU-s)", f.GatewayPerClaim, f.GrantedInClaimsRun, f.GatewaySeconds)
		if f.GatewayOverHello > 0 {
			fmt.Fprintf(&b, " = %.1f × hello (aim ≤ 3 ×)", f.GatewayOverHello)
		}
		b.WriteString("\n")
	}
	if p.redis > 0 {
		fmt.Fprintf(&b, "  redis-server       %8.1f µs per granted claim (%.2f CPU-s)\n", f.RedisPerClaim, f.RedisSeconds)
	}
	fmt.Fprintf(&b, "  flashbench itself  %8.1f µs per hello request, %.1f µs per claim (same cores)\n", f.LoadgenPerHello, f.LoadgenPerClaim)
	return b.String()
}
