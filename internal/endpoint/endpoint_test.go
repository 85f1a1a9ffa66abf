package endpoint

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
)

func TestProtocolTooOldIsUpgradeRequired(t *testing.T) {
	err := (&Server{}).apiError(fmt.Errorf("propose: %w", fsm.ErrProtocolTooOld))
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeUpgradeRequired || api.Status(ae.Code) != http.StatusConflict {
		t.Errorf("apiError = %v, want 409 upgrade_required", err)
	}
}
