package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"time"
)

// OracleReport is the correctness verdict of a run, from what the clients
// saw plus what the deployment reports through its admin API.
type OracleReport struct {
	OK         bool            `json:"ok"`
	Violations []string        `json:"violations"`
	Campaigns  []CampaignCheck `json:"campaigns"`
}

// CampaignCheck is one campaign's figures.
type CampaignCheck struct {
	ID                string `json:"id"`
	Deployed          string `json:"deployed_id"`
	Stock             int64  `json:"stock"`
	PerUserLimit      int    `json:"per_user_limit"`
	ClientGranted     int64  `json:"client_granted"` // distinct grant ids answered
	RedisGranted      int64  `json:"redis_granted"`
	Stored            int64  `json:"stored"`
	MissingDownstream int64  `json:"missing_downstream"`
}

// violationsShownMax bounds the violations listed per kind.
const violationsShownMax = 10

// RunOracle checks a finished run: oversell (I1), per-user limits (I2),
// duplicate grants, grants the gateway answered but did not count, and
// granted answers missing from the store once the pipeline settles (I5).
// settle bounds the wait for the store to catch up.
func RunOracle(ctx context.Context, res *DropResult, sc *Scenario, adminURL, adminToken string, settle time.Duration) *OracleReport {
	rep := &OracleReport{}
	add := func(format string, a ...any) { rep.Violations = append(rep.Violations, fmt.Sprintf(format, a...)) }

	type holder struct{ campaign, user, key string }
	byID := map[string]holder{}
	perUser := map[[2]string]map[string]bool{}
	perCampaign := map[string]map[string]bool{}
	dups := 0
	for _, o := range res.Observed {
		if o.GrantID == "" {
			add("a granted answer to %s in %s had no grant_id", o.User, o.Campaign)
			continue
		}
		h := holder{o.Campaign, o.User, o.Key}
		if prev, seen := byID[o.GrantID]; seen && prev != h {
			if dups++; dups <= violationsShownMax {
				add("duplicate grant %s: answered to %s/%s (key %s) and %s/%s (key %s)", o.GrantID, prev.campaign, prev.user, prev.key, o.Campaign, o.User, o.Key)
			}
		}
		byID[o.GrantID] = h
		k := [2]string{o.Campaign, o.User}
		if perUser[k] == nil {
			perUser[k] = map[string]bool{}
		}
		perUser[k][o.GrantID] = true
		if perCampaign[o.Campaign] == nil {
			perCampaign[o.Campaign] = map[string]bool{}
		}
		perCampaign[o.Campaign][o.GrantID] = true
	}
	if dups > violationsShownMax {
		add("… %d duplicate grants in all", dups)
	}
	limits := map[string]CampaignSpec{}
	for _, c := range sc.Campaigns {
		limits[c.ID] = c
	}
	over := 0
	for k, ids := range perUser {
		if lim := limits[k[0]].PerUserLimit; len(ids) > lim {
			if over++; over <= violationsShownMax {
				add("I2: user %s holds %d grants of %s (limit %d)", k[1], len(ids), k[0], lim)
			}
		}
	}
	for _, c := range sc.Campaigns {
		cc := CampaignCheck{ID: c.ID, Deployed: res.Campaigns[c.ID], Stock: c.Stock, PerUserLimit: c.PerUserLimit, ClientGranted: int64(len(perCampaign[c.ID]))}
		if cc.ClientGranted > c.Stock {
			add("I1: %s answered %d distinct grants for a stock of %d", c.ID, cc.ClientGranted, c.Stock)
		}
		st, err := campaignStats(ctx, adminURL, adminToken, cc.Deployed)
		deadline := time.Now().Add(settle)
		for err == nil && st.Stored < st.Granted && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			st, err = campaignStats(ctx, adminURL, adminToken, cc.Deployed)
		}
		if err != nil {
			add("%s: admin stats unreadable: %v", c.ID, err)
			rep.Campaigns = append(rep.Campaigns, cc)
			continue
		}
		cc.RedisGranted, cc.Stored = st.Granted, st.Stored
		if st.Granted > c.Stock {
			add("I1: %s counts %d grants for a stock of %d", c.ID, st.Granted, c.Stock)
		}
		if cc.ClientGranted > st.Granted {
			add("%s: clients were answered %d grants, the deployment counts %d", c.ID, cc.ClientGranted, st.Granted)
		}
		stored, err := storedGrants(ctx, adminURL, adminToken, cc.Deployed)
		if err != nil {
			add("%s: grants listing unreadable: %v", c.ID, err)
		} else {
			missing := 0
			for id := range perCampaign[c.ID] {
				user, ok := stored[id]
				if !ok || user != byID[id].user {
					missing++
					if missing <= violationsShownMax {
						add("I5: granted %s (%s) is missing downstream", id, byID[id].user)
					}
				}
			}
			cc.MissingDownstream = int64(missing)
		}
		rep.Campaigns = append(rep.Campaigns, cc)
	}
	// The deployment's own audit, given a few seconds to settle.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		v, err := auditViolations(ctx, adminURL, adminToken)
		if err != nil {
			break // no audit endpoint: the checks above stand alone
		}
		if len(v) == 0 || time.Now().After(deadline) {
			rep.Violations = append(rep.Violations, v...)
			break
		}
	}
	sort.Strings(rep.Violations)
	rep.OK = len(rep.Violations) == 0
	return rep
}

type statsView struct {
	Granted int64 `json:"granted"`
	Stored  int64 `json:"stored"`
}

func adminGet(ctx context.Context, adminURL, token, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", adminURL+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: HTTP %d %s", path, resp.StatusCode, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func campaignStats(ctx context.Context, adminURL, token, id string) (statsView, error) {
	var v struct {
		Stats statsView `json:"stats"`
	}
	err := adminGet(ctx, adminURL, token, "/admin/v1/campaigns/"+url.PathEscape(id), &v)
	return v.Stats, err
}

// storedGrantsPagesMax bounds the pages read (1000 grants each).
const storedGrantsPagesMax = 10_000

func storedGrants(ctx context.Context, adminURL, token, id string) (map[string]string, error) {
	out := map[string]string{}
	cursor := ""
	for page := 0; page < storedGrantsPagesMax; page++ {
		var p struct {
			Grants []struct {
				GrantID string `json:"grant_id"`
				User    string `json:"user"`
			} `json:"grants"`
			Next string `json:"next_cursor"`
		}
		if err := adminGet(ctx, adminURL, token, "/admin/v1/campaigns/"+url.PathEscape(id)+"/grants?limit=1000&cursor="+url.QueryEscape(cursor), &p); err != nil {
			return nil, err
		}
		for _, g := range p.Grants {
			out[g.GrantID] = g.User
		}
		if p.Next == "" {
			return out, nil
		}
		cursor = p.Next
	}
	return out, fmt.Errorf("more than %d pages", storedGrantsPagesMax)
}

func auditViolations(ctx context.Context, adminURL, token string) ([]string, error) {
	var a struct {
		Campaigns []struct {
			Campaign   string   `json:"campaign"`
			Violations []string `json:"violations"`
		} `json:"campaigns"`
	}
	if err := adminGet(ctx, adminURL, token, "/admin/v1/audit", &a); err != nil {
		return nil, err
	}
	var out []string
	for _, c := range a.Campaigns {
		for _, v := range c.Violations {
			out = append(out, "audit "+c.Campaign+": "+v)
		}
	}
	return out, nil
}
