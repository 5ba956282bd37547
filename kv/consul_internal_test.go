package kv

import (
	"errors"
	"testing"

	"github.com/hashicorp/consul/api"
)

// M12: txnOutcome is where a rolled-back transaction is classified (before
// the fix every one was ErrConflict). Only an all-stale answer is a conflict.
func TestTxnOutcome(t *testing.T) {
	stale := &api.TxnError{What: `failed to set key "p/k", index is stale`}
	denied := &api.TxnError{What: "Permission denied: token lacks permission 'key:write'"}
	other := &api.TxnError{What: `Value for key "p/k" is too large`}
	if v, err := txnOutcome(true, &api.KVTxnResponse{Results: []*api.KVPair{{ModifyIndex: 42}}}); v != 42 || err != nil {
		t.Fatalf("success: %d %v", v, err)
	}
	for name, c := range map[string]struct {
		resp          *api.KVTxnResponse
		conflict, acl bool
	}{
		"stale":            {&api.KVTxnResponse{Errors: api.TxnErrors{stale}}, true, false},
		"denied":           {&api.KVTxnResponse{Errors: api.TxnErrors{denied}}, false, true},
		"stale and denied": {&api.KVTxnResponse{Errors: api.TxnErrors{stale, denied}}, false, true},
		"other":            {&api.KVTxnResponse{Errors: api.TxnErrors{other}}, false, false},
		"nil error":        {&api.KVTxnResponse{Errors: api.TxnErrors{nil}}, false, false},
		"no errors":        {&api.KVTxnResponse{}, false, false},
		"no response":      {nil, false, false},
		"nil result":       {&api.KVTxnResponse{Results: []*api.KVPair{nil}}, false, false},
	} {
		_, err := txnOutcome(false, c.resp)
		if err == nil || errors.Is(err, ErrConflict) != c.conflict || errors.Is(err, ErrDenied) != c.acl {
			t.Errorf("%s: %v (conflict %v, denied %v)", name, err, c.conflict, c.acl)
		}
	}
}
