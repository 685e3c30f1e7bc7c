package builds

import (
	"errors"
	"testing"
)

func TestCheckTransition(t *testing.T) {
	ok := [][2]State{{Queued, Started}, {Queued, Finished}, {Started, Finished}, {Started, Queued}}
	bad := [][2]State{{Finished, Started}, {Finished, Queued}, {Finished, Finished}, {Queued, Queued}, {Started, Started}, {"", Queued}}
	for _, c := range ok {
		if err := CheckTransition(c[0], c[1]); err != nil {
			t.Errorf("%s → %s refused: %v", c[0], c[1], err)
		}
	}
	for _, c := range bad {
		if err := CheckTransition(c[0], c[1]); !errors.Is(err, ErrTransition) {
			t.Errorf("%s → %s: got %v, want ErrTransition", c[0], c[1], err)
		}
	}
}

func TestDeriveStatus(t *testing.T) {
	cases := []struct {
		state        State
		result, prev Result
		want         Status
	}{
		{Queued, "", Passed, StatusQueued},
		{Started, "", Failed, StatusStarted},
		{Finished, Passed, "", StatusPassed},
		{Finished, Passed, Passed, StatusPassed},
		{Finished, Passed, Failed, StatusFixed},
		{Finished, Passed, Errored, StatusFixed},
		{Finished, Failed, "", StatusFailed},
		{Finished, Failed, Passed, StatusBroken},
		{Finished, Failed, Failed, StatusStillFailing},
		{Finished, Failed, Errored, StatusStillFailing},
		{Finished, Errored, Passed, StatusErrored},
		{Finished, Canceled, Passed, StatusCanceled},
	}
	for _, c := range cases {
		if got := DeriveStatus(c.state, c.result, c.prev); got != c.want {
			t.Errorf("DeriveStatus(%s, %q, %q) = %s, want %s", c.state, c.result, c.prev, got, c.want)
		}
	}
}
