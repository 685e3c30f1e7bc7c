package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks/pusher"
	"github.com/buildbridge/buildbridge/store"
)

// Subscriptions is the part of the realtime server the channel endpoints
// use: attributing a socket to the user it was signed for, and counting a
// user's live subscriptions against their limit.
type Subscriptions interface {
	BindSocket(appID, socketID, userID string)
	UserSubscriptions(appID, userID string) int
}

// ChannelConfig tells clients where the realtime server is and how the
// auth endpoint signs for it.
type ChannelConfig struct {
	AppID, Key, Secret, Cluster string
	// WSHost and WSPort are what clients connect to.
	WSHost string
	WSPort int
	TLS    bool
	// MaxChannels is the default open-channel limit per user.
	MaxChannels int
	// EncryptionMasterKey (32 bytes) derives the shared secrets of
	// private-encrypted- channels; nil refuses them.
	EncryptionMasterKey []byte
	Subscriptions       Subscriptions
	// AllowedOrigins lists browser origins allowed to call the auth
	// endpoint from another site (CORS); "*" allows any.
	AllowedOrigins []string
}

// SystemChannel carries the operator's figures of the whole hub; only
// admins may subscribe to it.
const SystemChannel = "private-system"

// AuthEndpoint is where clients get channel subscriptions signed.
const AuthEndpoint = "/user/channel/auth"

// EnableChannels adds GET /api/v1/user/channel and POST /user/channel/auth.
func (a *API) EnableChannels(cfg ChannelConfig) error {
	if cfg.Key == "" || cfg.Secret == "" || cfg.Subscriptions == nil {
		return errors.New("api: channels need Key, Secret and Subscriptions")
	}
	if cfg.EncryptionMasterKey != nil && len(cfg.EncryptionMasterKey) != 32 {
		return errors.New("api: EncryptionMasterKey must be 32 bytes")
	}
	a.channels = &cfg
	a.Group.GET("/user/channel", a.channelInfo)
	a.engine.POST(AuthEndpoint, a.cors, a.channelAuth)
	a.engine.OPTIONS(AuthEndpoint, a.cors)
	return nil
}

func (a *API) maxChannels(u store.User) int {
	if u.MaxChannels > 0 {
		return u.MaxChannels
	}
	return a.channels.MaxChannels
}

func (a *API) channelInfo(c *gin.Context) {
	u := CurrentUser(c)
	cc := a.channels
	c.JSON(http.StatusOK, gin.H{
		"key": cc.Key, "cluster": cc.Cluster, "channel": event.UserChannel(u.ID),
		"encrypted_channel": "private-encrypted-user-" + strconv.FormatInt(u.ID, 10),
		"ws_host":           cc.WSHost, "ws_port": cc.WSPort, "force_tls": cc.TLS,
		"auth_endpoint": AuthEndpoint, "max_channels": a.maxChannels(u),
		"open_channels": cc.Subscriptions.UserSubscriptions(cc.AppID, strconv.FormatInt(u.ID, 10)),
	})
}

func (a *API) cors(c *gin.Context) {
	origin := c.GetHeader("Origin")
	if origin != "" {
		for _, o := range a.channels.AllowedOrigins {
			if o == "*" || strings.EqualFold(o, origin) {
				c.Header("Access-Control-Allow-Origin", origin)
				c.Header("Vary", "Origin")
				c.Header("Access-Control-Allow-Headers", "Authorization, Content-Type")
				c.Header("Access-Control-Allow-Methods", "POST, OPTIONS")
				break
			}
		}
	}
	if c.Request.Method == http.MethodOptions {
		c.AbortWithStatus(http.StatusNoContent)
	}
}

var socketIDPattern = regexp.MustCompile(`^\d{1,20}\.\d{1,20}$`)

// channelAuth signs a subscription for the caller's own channels only.
func (a *API) channelAuth(c *gin.Context) {
	u, err := a.UserFromRequest(c.Request)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, 16<<10)
	var in struct {
		SocketID    string `json:"socket_id" form:"socket_id"`
		ChannelName string `json:"channel_name" form:"channel_name"`
	}
	if strings.HasPrefix(c.ContentType(), "application/json") {
		if err := a.decode(c, &in); err != nil {
			a.fail(c, err)
			return
		}
	} else if err := c.Request.ParseForm(); err != nil {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_form", "cannot read the form: %v", err))
		return
	} else {
		in.SocketID, in.ChannelName = c.Request.PostForm.Get("socket_id"), c.Request.PostForm.Get("channel_name")
	}
	if !socketIDPattern.MatchString(in.SocketID) {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field \"socket_id\" must look like 123.456, got %q", in.SocketID))
		return
	}
	if in.ChannelName == "" || len(in.ChannelName) > 200 {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_field", "field \"channel_name\" is required (at most 200 characters)"))
		return
	}
	cc := a.channels
	uid := strconv.FormatInt(u.ID, 10)
	resp := gin.H{}
	var channelData string
	switch ch := in.ChannelName; {
	case ch == event.UserChannel(u.ID):
	case ch == SystemChannel:
		if !u.Admin {
			a.fail(c, errorf(http.StatusForbidden, "forbidden", "only admins may subscribe to %s", SystemChannel))
			return
		}
	case ch == "private-encrypted-user-"+uid:
		if cc.EncryptionMasterKey == nil {
			a.fail(c, errorf(http.StatusForbidden, "encryption_disabled", "encrypted channels are not enabled on this server"))
			return
		}
		sum := pusher.SharedSecret(ch, cc.EncryptionMasterKey)
		resp["shared_secret"] = base64.StdEncoding.EncodeToString(sum[:])
	case strings.HasPrefix(ch, "presence-project-"):
		p, err := a.cfg.Store.ProjectByName(c.Request.Context(), strings.TrimPrefix(ch, "presence-project-"))
		if err != nil || (!u.Admin && p.OwnerID != u.ID) {
			a.fail(c, errorf(http.StatusForbidden, "forbidden", "you cannot join %q: no project of yours has that name", ch))
			return
		}
		raw, _ := json.Marshal(map[string]any{"user_id": uid, "user_info": map[string]any{"name": u.Name}})
		channelData = string(raw)
		resp["channel_data"] = channelData
	default:
		a.fail(c, errorf(http.StatusForbidden, "forbidden",
			"you may subscribe only to your own channels (%s, private-encrypted-user-%s) and presence channels of your projects; %q is not one", event.UserChannel(u.ID), uid, ch))
		return
	}
	if n, max := cc.Subscriptions.UserSubscriptions(cc.AppID, uid), a.maxChannels(u); n >= max {
		a.fail(c, errorf(http.StatusForbidden, "channel_limit",
			"open-channel limit reached: you have %d of %d channels open; close one (unsubscribe or disconnect) first", n, max))
		return
	}
	cc.Subscriptions.BindSocket(cc.AppID, in.SocketID, uid)
	resp["auth"] = cc.Key + ":" + signChannel(cc.Secret, in.SocketID, in.ChannelName, channelData)
	c.JSON(http.StatusOK, resp)
}

// signChannel is Pusher's subscription signature:
// HMAC-SHA256(secret, "socket_id:channel_name[:channel_data]") in hex.
func signChannel(secret, socketID, channel, channelData string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(socketID + ":" + channel))
	if channelData != "" {
		m.Write([]byte(":" + channelData))
	}
	return hex.EncodeToString(m.Sum(nil))
}
